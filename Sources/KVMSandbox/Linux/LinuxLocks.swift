import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Record locks (`fcntl` F_GETLK/F_SETLK/F_SETLKW and their OFD forms) and `flock`.
///
/// A host file's locks are held on the host file, so they exclude other programs (and other
/// VMs) that lock it: always as open-file-description locks there (`F_OFD_*`), because the
/// host is one process for every VM, and process-owned POSIX locks would neither exclude one VM
/// from another nor survive another VM closing the file. The guest is one process, so its own
/// POSIX locks never conflict with each other, as on Linux; an in-memory file's locks only
/// ever meet the guest's own and always succeed. A lock that has to wait waits in slices, never
/// past the run's deadline (then EINTR), as a blocking read does.
extension LinuxPersonality {
    /// fcntl commands.
    enum LockCommand {
        static let get: UInt64 = 5, set: UInt64 = 6, setWait: UInt64 = 7
        static let openGet: UInt64 = 36, openSet: UInt64 = 37, openSetWait: UInt64 = 38
        static let all: Set<UInt64> = [get, set, setWait, openGet, openSet, openSetWait]
    }

    /// How long one wait for a lock sleeps before looking again (and at the deadline).
    static let lockSlice: useconds_t = 10_000

    /// fcntl(fd, F_[OFD_]GETLK/SETLK/SETLKW, struct flock *).
    func recordLock(fd: Int64, command: UInt64, _ memory: GuestMemoryView, flock address: UInt64) throws -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        var bytes = try memory.read(address, count: 32)  // short type, short whence, off_t start, off_t len, pid_t pid
        let type = Int16(littleEndianBytes: bytes[0..<2])
        guard [0, 1, 2].contains(type) else { return Self.fail(.invalidArgument) }  // F_RDLCK, F_WRLCK, F_UNLCK
        let isGet = command == LockCommand.get || command == LockCommand.openGet
        let waits = command == LockCommand.setWait || command == LockCommand.openSetWait
        switch file.kind {
        case .host(let host):
            // A read lock needs a readable description, a write lock a writable one (EBADF).
            if !isGet && (type == 0 && !file.readable || type == 1 && !file.writable) { return Self.fail(.badFileDescriptor) }
            var request = flock()
            request.l_type = type
            request.l_whence = Int16(littleEndianBytes: bytes[2..<4])
            request.l_start = off_t(Int64(littleEndianBytes: bytes[8..<16]))
            request.l_len = off_t(Int64(littleEndianBytes: bytes[16..<24]))
            request.l_pid = 0  // OFD locks want 0
            if isGet {
                guard fcntl(host.fd, Int32(LockCommand.openGet), &request) == 0 else { return Self.fail(Errno.current) }
                bytes.replaceSubrange(0..<2, with: request.l_type.littleEndianBytes)
                bytes.replaceSubrange(2..<4, with: request.l_whence.littleEndianBytes)
                bytes.replaceSubrange(8..<16, with: Int64(request.l_start).littleEndianBytes)
                bytes.replaceSubrange(16..<24, with: Int64(request.l_len).littleEndianBytes)
                // The holder: another program (or VM); Linux reports -1 for an OFD lock.
                bytes.replaceSubrange(24..<28, with: Int32(request.l_type == 2 ? 0 : -1).littleEndianBytes)
                try memory.write(bytes, to: address)
                return .value(0)
            }
            while true {
                if fcntl(host.fd, Int32(LockCommand.openSet), &request) == 0 { return .value(0) }
                let error = Errno.current
                guard waits, error == .resourceTemporarilyUnavailable || error == .permissionDenied else { return Self.fail(error) }
                if interrupter?.isInterrupted ?? false { return Self.fail(.interrupted) }
                usleep(Self.lockSlice)
            }
        case .memoryFile:
            if isGet {
                bytes.replaceSubrange(0..<2, with: Int16(2).littleEndianBytes)  // F_UNLCK: nothing in the way
                try memory.write(bytes, to: address)
            }
            return .value(0)
        case .directory(_, .some):
            return isGet || type == 2 ? .value(0) : Self.fail(.badFileDescriptor)
        default:
            return Self.fail(.badFileDescriptor)
        }
    }

    /// flock(fd, LOCK_SH/LOCK_EX/LOCK_UN [| LOCK_NB]): on the host file for a host file (such
    /// locks belong to the open file description there too), always granted for an in-memory one.
    func fileLock(fd: Int64, operation: UInt64) -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        let kind = operation & ~UInt64(LOCK_NB)
        guard kind == UInt64(LOCK_SH) || kind == UInt64(LOCK_EX) || kind == UInt64(LOCK_UN) else { return Self.fail(.invalidArgument) }
        let host: Int32
        switch file.kind {
        case .host(let file), .directory(_, .some(let file)): host = file.fd
        case .memoryFile, .directory(_, nil): return .value(0)
        default: return Self.fail(.invalidArgument)
        }
        while true {
            if flock(host, Int32(kind) | LOCK_NB) == 0 { return .value(0) }
            let error = Errno.current
            guard operation & UInt64(LOCK_NB) == 0, error == .resourceTemporarilyUnavailable else { return Self.fail(error) }
            if interrupter?.isInterrupted ?? false { return Self.fail(.interrupted) }
            usleep(Self.lockSlice)
        }
    }
}
