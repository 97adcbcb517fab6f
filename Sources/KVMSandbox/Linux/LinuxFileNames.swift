import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Descriptors (fcntl, dup, ioctl) and changes to names beneath writable grants and in-memory
/// directories (mkdir, unlink, rmdir, rename).
extension LinuxPersonality {
    func control(fd: Int64, command: UInt64, argument: UInt64) -> HostCallEffect {
        guard let entry = state.files.entry(fd), let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        switch command {
        case 0, 1030:  // F_DUPFD, F_DUPFD_CLOEXEC
            guard argument < UInt64(FileTable.limit) else { return Self.fail(.invalidArgument) }
            return duplicate(fd, lowest: Int32(argument), at: nil, closeOnExec: command == 1030)
        case 1: return .value(entry.closeOnExec ? 1 : 0)  // F_GETFD
        case 2: state.files.setCloseOnExec(fd, argument & 1 != 0); return .value(0)  // F_SETFD
        case 3: return .value(Int64(file.statusFlags))  // F_GETFL
        case 4:  // F_SETFL: only O_APPEND and O_NONBLOCK change
            let changeable = O_APPEND | O_NONBLOCK
            state.files.update(fd) { $0.statusFlags = ($0.statusFlags & ~changeable) | (Int32(truncatingIfNeeded: argument) & changeable) }
            return .value(0)
        default: return Self.fail(.invalidArgument)
        }
    }

    func duplicate(_ fd: Int64, lowest: Int32, at target: Int64?, closeOnExec: Bool, dup2: Bool = false) -> HostCallEffect {
        guard state.files.entry(fd) != nil else { return Self.fail(.badFileDescriptor) }
        if let target {
            guard target >= 0, target < Int64(FileTable.limit) else { return Self.fail(.badFileDescriptor) }
            if dup2 && target == fd { return .value(fd) }
        }
        guard let new = state.files.duplicate(fd, lowest: lowest, at: target.map { Int32($0) }, closeOnExec: closeOnExec) else {
            return Self.fail(.tooManyOpenFiles)
        }
        return .value(Int64(new))
    }

    func ioctl(fd: Int64, request: UInt64, _ memory: GuestMemoryView, argument: UInt64) throws -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        if case .output(let stream) = file.kind, request == 0x5413 {  // TIOCGWINSZ on a terminal
            return .value(try builtins.windowSize(stream: stream, memory, into: argument))
        }
        return .value(-Int64(ENOTTY))
    }

    // MARK: changes beneath --rw grants

    /// A writable grant's directory fd and the last component, for the *at calls that change names.
    func parentInWritableGrant(_ path: String) -> Result<(Int32, String), Errno> {
        guard let (mount, _) = fileSystem.locate(path) else {
            return .failure(isAncestorOfAMount(path) ? .readOnlyFileSystem : .noSuchFileOrDirectory)
        }
        guard mount.writable else { return .failure(.readOnlyFileSystem) }
        let parent = FileSystemView.parent(of: path)
        guard fileSystem.locate(parent) != nil else { return .failure(.permissionDenied) }  // the grant itself
        switch fileSystem.open(parent, flags: 0o10000000 | O_DIRECTORY, mode: 0) {
        case .failure(let error): return .failure(error)
        case .success(let fd): return .success((fd, FileSystemView.lastComponent(of: path)))
        }
    }

    func makeDirectory(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, mode: UInt64) throws -> HostCallEffect {
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let path):
            if state.memoryFiles.covers(path) { return state.memoryFiles.makeDirectory(path).map(Self.fail) ?? .value(0) }
            switch parentInWritableGrant(path) {
            case .failure(let error): return Self.fail(error)
            case .success(let (fd, name)):
                defer { close(fd) }
                return mkdirat(fd, name, mode_t(mode & 0o777 & ~state.umask)) == 0 ? .value(0) : Self.fail(Errno.current)
            }
        }
    }

    func remove(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, directory: Bool) throws -> HostCallEffect {
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let path):
            if state.memoryFiles.covers(path) { return state.memoryFiles.remove(path, directory: directory).map(Self.fail) ?? .value(0) }
            switch parentInWritableGrant(path) {
            case .failure(let error): return Self.fail(error)
            case .success(let (fd, name)):
                defer { close(fd) }
                return unlinkat(fd, name, directory ? 0x200 : 0) == 0 ? .value(0) : Self.fail(Errno.current)
            }
        }
    }

    func rename(_ fromDirectory: Int64, _ memory: GuestMemoryView, _ from: UInt64, _ toDirectory: Int64, _ to: UInt64) throws -> HostCallEffect {
        guard case .success(let source) = try guestPath(fromDirectory, memory, from),
              case .success(let target) = try guestPath(toDirectory, memory, to) else { return Self.fail(.noSuchFileOrDirectory) }
        switch (state.memoryFiles.covers(source), state.memoryFiles.covers(target)) {
        case (true, true): return state.memoryFiles.rename(source, to: target).map(Self.fail) ?? .value(0)
        case (true, false), (false, true): return Self.fail(.improperLink)  // EXDEV: across file systems
        case (false, false): break
        }
        let from = parentInWritableGrant(source), to = parentInWritableGrant(target)
        defer {
            if case .success(let (fd, _)) = from { close(fd) }
            if case .success(let (fd, _)) = to { close(fd) }
        }
        switch (from, to) {
        case (.success(let (sourceFD, sourceName)), .success(let (targetFD, targetName))):
            return renameat(sourceFD, sourceName, targetFD, targetName) == 0 ? .value(0) : Self.fail(Errno.current)
        case (.failure(let error), _), (_, .failure(let error)):
            return Self.fail(error)
        }
    }
}
