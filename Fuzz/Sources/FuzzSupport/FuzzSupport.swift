@_spi(Fuzzing) import KVMSandbox
#if canImport(Glibc)
import Glibc
#endif

@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>,
                             _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                             _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// The current target's body (one per process; libFuzzer calls it from one thread).
nonisolated(unsafe) private var target: ([UInt8]) -> Void = { _ in }

/// Runs libFuzzer's driver with `body` as the target: SwiftPM renames each executable's `main`,
/// so libFuzzer's own main cannot be used; `LLVMFuzzerRunDriver` is its documented alternative.
public func runFuzzer(_ body: @escaping ([UInt8]) -> Void) -> Never {
    target = body
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(runFuzzerDriver(&argc, &argv, fuzzOne))
}

/// libFuzzer's entry point (also named, so that libFuzzer's own references resolve).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    target(size == 0 || data == nil ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// The live-VM harness for host-call and mailbox fuzzing: a fork of the guest named by
/// `KVMSANDBOX_FUZZ_GUEST` (Scripts/fuzz builds one).
@_spi(Fuzzing) public func liveHarness() -> HostCallFuzzer {
    guard let path = getenv("KVMSANDBOX_FUZZ_GUEST") else { fatalError("set KVMSANDBOX_FUZZ_GUEST to a guest that calls ks_ready()") }
    let grant = getenv("KVMSANDBOX_FUZZ_GRANT").map { String(cString: $0) }
    do { return try HostCallFuzzer(elfPath: String(cString: path), grant: grant) } catch { fatalError("cannot start the harness: \(error)") }
}

/// Runs `body`; a thrown error is a host-side failure (a KVM ioctl failed): a finding.
public func mustNotThrow(_ body: () throws -> Void) {
    do { try body() } catch { fatalError("host-side error: \(error)") }
}
