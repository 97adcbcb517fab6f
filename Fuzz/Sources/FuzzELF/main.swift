// libFuzzer target: ELF parse + load + symbolize.
@_spi(Fuzzing) import KVMSandbox
import FuzzSupport

runFuzzer { FuzzEntryPoints.elf($0) }
