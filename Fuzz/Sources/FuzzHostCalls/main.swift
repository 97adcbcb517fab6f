// libFuzzer target: host-call dispatch against a live fork (see HostCallFuzzer.hostCalls).
@_spi(Fuzzing) import KVMSandbox
@_spi(Fuzzing) import FuzzSupport

let harness = liveHarness()
runFuzzer { input in mustNotThrow { try harness.hostCalls(input) } }
