@_spi(Fuzzing) import KVMSandbox
#if canImport(Glibc)
import Glibc
#endif

/// One live VM for the whole run: a fork of the guest named by KVMSANDBOX_FUZZ_GUEST.
nonisolated(unsafe) let harness: HostCallFuzzer = {
    guard let path = getenv("KVMSANDBOX_FUZZ_GUEST") else { fatalError("set KVMSANDBOX_FUZZ_GUEST to a guest that calls ks_ready()") }
    do { return try HostCallFuzzer(elfPath: String(cString: path)) } catch { fatalError("cannot start the harness: \(error)") }
}()

/// libFuzzer entry: see `HostCallFuzzer.hostCalls`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    do { try harness.hostCalls(Array(UnsafeBufferPointer(start: data, count: size))) } catch {
        fatalError("host-side error (a KVM ioctl failed): \(error)")
    }
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>,
                     _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32
