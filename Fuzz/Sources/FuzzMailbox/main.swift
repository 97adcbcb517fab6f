// libFuzzer target: the exitless mailbox against a live fork (see HostCallFuzzer.mailbox).
@_spi(Fuzzing) import KVMSandbox
@_spi(Fuzzing) import FuzzSupport

let harness = liveHarness()
runFuzzer { input in mustNotThrow { try harness.mailbox(input) } }
