#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// Why a sandbox could not be created or run. Guest misbehaviour is not an error: it is a `RunOutcome`.
public enum SandboxError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `/dev/kvm` does not exist.
    case kvmNotFound(path: String)
    /// `/dev/kvm` exists but this user may not open it.
    case kvmPermissionDenied(path: String)
    /// `/dev/kvm` could not be opened for another reason.
    case kvmOpenFailed(path: String, errno: Errno)
    /// The kernel speaks a KVM API version other than 12.
    case unsupportedAPIVersion(Int32)
    /// This KVM lacks a capability the sandbox requires.
    case missingCapability(name: String)
    /// A KVM ioctl failed.
    case kvm(KVMError)
    /// A host resource (memfd, mmap, thread) could not be had.
    case hostResource(operation: String, errno: Errno)
    /// The guest program is not a loadable ELF; the message says why.
    case invalidELF(ELFError)
    /// The guest does not fit into the configured memory.
    case outOfGuestMemory(needed: UInt64, available: UInt64)
    /// A configuration value is out of range.
    case invalidConfiguration(String)
    /// Host-call numbers below `HostCallNumber.firstUserNumber` belong to the built-in calls.
    case reservedHostCallNumber(Int)
    /// `run()` was called on a sandbox whose guest has already finished.
    case alreadyFinished
    /// `Snapshot(elfPath:)`: the guest ended before it called `ks_ready()`.
    case notReady(RunOutcome)
    /// A snapshot or a guest function call needs a sandbox paused at `ks_ready()` or after a call.
    case notPaused
    /// `reset()` needs a fork of a snapshot.
    case notAFork
    /// A snapshot of a program that has started other processes (one VM each) is not possible
    /// yet: it would hold only this one.
    case severalProcesses(Int)
    /// A guest function call named a symbol the ELF does not have as a function.
    case noSuchFunction(String)
    /// A guest function call's arguments do not fit the calling convention or the guest stack.
    case invalidArguments(String)
    /// `run()` was called while the guest is running (from a host-call or exception handler).
    case alreadyRunning
    /// Loading the program took longer than the configured timeout.
    case loadTimedOut
    /// A paranoid reset (`SandboxConfiguration.verifyResets`) found the fork different from its
    /// snapshot; the differences are listed.
    case resetVerificationFailed([String])
    /// A typed guest function call (`call(_:_:) -> Result`) ended without returning: the
    /// function's name and how the call ended instead (a fault, a timeout, an exit, ...).
    case callDidNotReturn(function: String, outcome: RunOutcome)

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String {
        switch self {
        case .kvmNotFound(let path):
            return "\(path) does not exist: this machine has no KVM (load kvm_intel, kvm_amd or kvm_pvm, or enable nested virtualization)"
        case .kvmPermissionDenied(let path):
            guard let (owner, group, mode) = Self.access(of: path) else {
                return "no permission to open \(path): run as root or add this user to the 'kvm' group"
            }
            return "no permission to open \(path) (owner \(owner), group \(group), mode \(String(mode, radix: 8))): "
                + "add this user to the group (sudo usermod -aG \(group) $USER, then log in again) or run as root"
        case .kvmOpenFailed(let path, let errno):
            return "cannot open \(path): \(errno)"
        case .unsupportedAPIVersion(let version):
            return "KVM API version \(version) is not supported (need 12)"
        case .missingCapability(let name):
            return "this KVM lacks \(name), which kvmsandbox requires"
        case .kvm(let error):
            return error.description
        case .hostResource(let operation, let errno):
            return "\(operation) failed: \(errno)"
        case .invalidELF(let error):
            return "invalid guest program: \(error)"
        case .outOfGuestMemory(let needed, let available):
            return "guest memory too small: needs \(needed / 1024) KiB more, \(available / 1024) KiB left (raise --memory)"
        case .invalidConfiguration(let message):
            return "invalid configuration: \(message)"
        case .reservedHostCallNumber(let number):
            return "host-call number \(number) is reserved for built-in calls (use \(HostCallNumber.firstUserNumber) or above)"
        case .alreadyFinished:
            return "the guest has already finished; create a new sandbox to run it again"
        case .notReady(let outcome):
            return "the guest ended before it was ready (ks_ready(), or its first read of stdin): \(outcome)"
        case .notPaused:
            return "the sandbox is not paused at ks_ready() or after a guest call (run a snapshot's fork, or runUntilReady() first)"
        case .notAFork:
            return "only a fork of a snapshot can be reset"
        case .severalProcesses(let count):
            return "the program has \(count) processes; a snapshot holds one VM, so it can be taken only while the program is a single process"
        case .noSuchFunction(let name):
            return "the guest program has no function named \(name)"
        case .invalidArguments(let why):
            return "invalid guest call arguments: \(why)"
        case .alreadyRunning:
            return "the guest is running: run() cannot be called from one of its own handlers"
        case .loadTimedOut:
            return "loading the program took longer than the timeout"
        case .resetVerificationFailed(let differences):
            return "after a reset the VM differs from its snapshot: \(differences.joined(separator: "; "))"
        case .callDidNotReturn(let function, let outcome):
            return "the guest function \(function) did not return: \(outcome)"
        }
    }
}

extension SandboxError {
    /// The owner's and group's names and the permission bits of `path`, for a message about it.
    static func access(of path: String) -> (owner: String, group: String, mode: UInt32)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let owner = getpwuid(info.st_uid).flatMap { $0.pointee.pw_name.map { String(cString: $0) } } ?? "\(info.st_uid)"
        let group = getgrgid(info.st_gid).flatMap { $0.pointee.gr_name.map { String(cString: $0) } } ?? "\(info.st_gid)"
        return (owner, group, info.st_mode & 0o7777)
    }
}
