/// Host-call numbers. Built-in calls use Linux x86-64 system-call numbers and semantics, so the
/// same table serves `ks_hostcall` (the `out` trap) and the `syscall` instruction (musl's libc).
/// Embedders register their own calls at `firstUserNumber` and above.
public enum HostCallNumber {
    /// Linux x86-64 `read`, served as a built-in host call.
    public static let read = 0
    /// Linux x86-64 `write`, served as a built-in host call.
    public static let write = 1
    /// Linux x86-64 `mmap`, served as a built-in host call.
    public static let mmap = 9
    /// Linux x86-64 `mprotect`, served as a built-in host call.
    public static let mprotect = 10
    /// Linux x86-64 `munmap`, served as a built-in host call.
    public static let munmap = 11
    /// Linux x86-64 `brk`, served as a built-in host call.
    public static let brk = 12
    /// Linux x86-64 `rt_sigaction`, served as a built-in host call.
    public static let rtSigaction = 13
    /// Linux x86-64 `rt_sigprocmask`, served as a built-in host call.
    public static let rtSigprocmask = 14
    /// Linux x86-64 `ioctl`, served as a built-in host call.
    public static let ioctl = 16
    /// Linux x86-64 `writev`, served as a built-in host call.
    public static let writev = 20
    /// Linux x86-64 `madvise`, served as a built-in host call.
    public static let madvise = 28
    /// Linux x86-64 `getpid`, served as a built-in host call.
    public static let getpid = 39
    /// Linux x86-64 `exit`, served as a built-in host call.
    public static let exit = 60
    /// Linux x86-64 `kill`, served as a built-in host call.
    public static let kill = 62
    /// Linux x86-64 `arch_prctl`, served as a built-in host call.
    public static let archPrctl = 158
    /// Linux x86-64 `gettid`, served as a built-in host call.
    public static let gettid = 186
    /// Linux x86-64 `tkill`, served as a built-in host call.
    public static let tkill = 200
    /// Linux x86-64 `set_tid_address`, served as a built-in host call.
    public static let setTidAddress = 218
    /// Linux x86-64 `clock_gettime`, served as a built-in host call.
    public static let clockGettime = 228
    /// Linux x86-64 `exit_group`, served as a built-in host call.
    public static let exitGroup = 231
    /// Linux x86-64 `tgkill`, served as a built-in host call.
    public static let tgkill = 234
    /// Linux x86-64 `getrandom`, served as a built-in host call.
    public static let getrandom = 318
    /// `ks_ready()`: the guest has initialized; a snapshot may be taken here (0 is returned).
    public static let ready = 0xf00
    /// Used by the return stub of a host-to-guest function call: the result is in the first argument.
    public static let guestCallReturn = 0xf01
    /// `KS_HC_MAILBOX_WAIT`: the guest gave up spinning on mailbox request `arg0`; the result
    /// of that request is returned.
    public static let mailboxWait = 0xf02
    /// `KS_HC_PARK_WAIT`: a parked VM's idle stub found no request within its spin and sleeps
    /// until one is posted (only the host's stub makes it).
    public static let parkWait = 0xf03
    /// The first number an embedder may register.
    public static let firstUserNumber = 0x1000
}

/// The port a guest writes to (`out %al, $0x42`) to make a host call.
public let hostCallPort: UInt16 = 0x42

/// Linux errno values a host call returns negated.
public enum HostCallErrno {
    /// `EPERM` (1).
    public static let EPERM: Int32 = 1
    /// `ENOENT` (2).
    public static let ENOENT: Int32 = 2
    /// `EINTR` (4).
    public static let EINTR: Int32 = 4
    /// `EIO` (5).
    public static let EIO: Int32 = 5
    /// `E2BIG` (7).
    public static let E2BIG: Int32 = 7
    /// `EBADF` (9).
    public static let EBADF: Int32 = 9
    /// `ENOMEM` (12).
    public static let ENOMEM: Int32 = 12
    /// `EACCES` (13).
    public static let EACCES: Int32 = 13
    /// `EFAULT` (14).
    public static let EFAULT: Int32 = 14
    /// `EINVAL` (22).
    public static let EINVAL: Int32 = 22
    /// `ENOTTY` (25).
    public static let ENOTTY: Int32 = 25
    /// `EFBIG` (27).
    public static let EFBIG: Int32 = 27
    /// `EPIPE` (32).
    public static let EPIPE: Int32 = 32
    /// `ENOSYS` (38).
    public static let ENOSYS: Int32 = 38
}

extension HostCallErrno {
    /// What the guest gets when a handler throws `error`: -EFAULT for a bad guest address,
    /// -code for a `HostCallFailure`; nil for any other error (a host failure: the run ends).
    static func result(for error: any Error) -> Int64? {
        switch error {
        case is GuestMemoryError: return -Int64(EFAULT)
        case let failure as HostCallFailure: return -Int64(failure.code)
        default: return nil
        }
    }
}

/// Thrown by a host-call handler to return `-code` to the guest.
public struct HostCallFailure: Error, Sendable, Equatable {
    /// The (positive) errno.
    public let code: Int32
    /// Fails the call with `code` (e.g. `HostCallErrno.EINVAL`).
    public init(_ code: Int32) { self.code = code }
}

/// One host call, as a handler sees it: the number, six integer arguments, and checked access to
/// the guest's memory.
public struct HostCall {
    /// The host-call number (guest `rax`).
    public let number: Int
    /// The arguments, in the order of guest registers rdi, rsi, rdx, r10, r8, r9.
    public let arguments: [UInt64]
    /// The guest's memory, with the guest's own permissions.
    public let memory: GuestMemoryView

    /// Argument `index` (0...5) as an unsigned integer.
    public subscript(index: Int) -> UInt64 { arguments[index] }
    /// Argument `index` as a signed integer.
    public func signed(_ index: Int) -> Int64 { Int64(bitPattern: arguments[index]) }
}

/// A host-call handler. The value it returns goes to the guest's `rax`. Throwing
/// `GuestMemoryError` returns `-EFAULT`; throwing `HostCallFailure(code)` returns `-code`;
/// any other error ends the run with `RunOutcome.hostCallFailed`.
public typealias HostCallHandler = @Sendable (HostCall) throws -> Int64

/// Where the guest's writes to fd 1 or 2 go.
public enum OutputDestination: Sendable, Equatable, Codable {
    /// A host file descriptor (not closed by the sandbox).
    case fileDescriptor(Int32)
    /// Kept in memory, read back with `Sandbox.capturedOutput(fd:)`.
    case capture
    /// Thrown away (the guest still sees the write succeed).
    case discard
}
