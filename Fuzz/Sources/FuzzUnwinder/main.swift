// libFuzzer target: 64 bytes of registers + an ELF with call-frame and DWARF sections.
@_spi(Fuzzing) import KVMSandbox
import FuzzSupport

runFuzzer { FuzzEntryPoints.unwind($0) }
