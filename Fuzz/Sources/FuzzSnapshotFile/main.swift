// libFuzzer target: snapshot file parse + validation.
@_spi(Fuzzing) import KVMSandbox
import FuzzSupport

runFuzzer { FuzzEntryPoints.snapshotFile($0) }
