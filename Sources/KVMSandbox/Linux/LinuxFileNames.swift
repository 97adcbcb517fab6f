import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Descriptors (fcntl, dup, ioctl) and changes to names beneath writable grants and in-memory
/// directories (mkdir, unlink, rmdir, rename).
extension LinuxPersonality {
    func control(fd: Int64, command: UInt64, argument: UInt64, _ memory: GuestMemoryView) throws -> HostCallEffect {
        guard let entry = state.files.entry(fd), let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        if LockCommand.all.contains(command) { return try recordLock(fd: fd, command: command, memory, flock: argument) }
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
        switch request {
        case 0x5421:  // FIONBIO: O_NONBLOCK from an int, as F_SETFL would set it (Python's setblocking)
            let on = try memory.load(UInt32.self, at: argument) != 0
            state.files.update(fd) { $0.statusFlags = on ? $0.statusFlags | O_NONBLOCK : $0.statusFlags & ~O_NONBLOCK }
            return .value(0)
        case 0x5451, 0x5450:  // FIOCLEX, FIONCLEX
            state.files.setCloseOnExec(fd, request == 0x5451)
            return .value(0)
        default: break
        }
        return .value(-Int64(ENOTTY))
    }

    // MARK: changes beneath --rw grants

    /// The directory a name change happens in: its host fd (the caller closes it), the last
    /// component, and the grant the directory lies in once every link on the way is followed.
    ///
    /// The rule for every call that creates, removes or renames a name: writability is that
    /// grant's, never the guest path's (a link in a writable grant may lead into a read-only
    /// one); a name that is a grant's root, or lies above one, is a mount point (`EBUSY`).
    struct NameChange {
        let directory: Int32
        let name: String
        let grant: FileSystemView.Mount
    }

    func nameChange(_ path: String, removing: Bool) -> Result<NameChange, Errno> {
        nameLocation(path, removing: removing).flatMap(Self.permitted)
    }

    /// Where a name lies (its resolved directory and grant), before any writability check.
    func nameLocation(_ path: String, removing: Bool) -> Result<(NameChange, isMountPoint: Bool), Errno> {
        let name = FileSystemView.lastComponent(of: path)
        let parent = FileSystemView.parent(of: path)
        guard path != "/" else { return .failure(.resourceBusy) }
        if fileSystem.locate(parent) == nil {
            // Above every grant: synthetic, read-only directories.
            if fileSystem.isMountPoint(path) { return .failure(.resourceBusy) }
            return .failure(removing || !isAncestorOfAMount(parent) ? .noSuchFileOrDirectory : .readOnlyFileSystem)
        }
        return fileSystem.openDirectoryForChange(parent).map { resolved in
            let final = resolved.path == "/" ? "/" + name : resolved.path + "/" + name
            return (NameChange(directory: resolved.fd, name: name, grant: resolved.mount), fileSystem.isMountPoint(final))
        }
    }

    /// A located name the guest may change: its grant writable (else EROFS), not a mount point
    /// (else EBUSY). Closes the directory of a refused one.
    static func permitted(_ location: (NameChange, isMountPoint: Bool)) -> Result<NameChange, Errno> {
        let (change, isMountPoint) = location
        guard change.grant.writable, !isMountPoint else {
            close(change.directory)
            return .failure(change.grant.writable ? .resourceBusy : .readOnlyFileSystem)
        }
        return .success(change)
    }

    func makeDirectory(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, mode: UInt64) throws -> HostCallEffect {
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let path):
            if state.memoryFiles.covers(path) { return state.memoryFiles.makeDirectory(path).map(Self.fail) ?? .value(0) }
            switch nameChange(path, removing: false) {
            case .failure(let error): return Self.fail(error)
            case .success(let change):
                defer { close(change.directory) }
                let mode = mode_t(mode & 0o777 & ~state.umask)
                if let allowance = diskAllowance, allowance < Self.diskEntryCharge { return Self.fail(.noSpace) }
                guard mkdirat(change.directory, change.name, mode) == 0 else { return Self.fail(Errno.current) }
                chargeDisk(Self.diskEntryCharge)
                return .value(0)
            }
        }
    }

    /// An in-memory file unlinked while this process has it open (`tmpfile()`, python's
    /// multiprocessing arenas) lives on under a name no guest path can spell (it holds a NUL),
    /// left out of listings, and its open descriptions follow it; nil when it is not open here.
    /// (Removed when its last descriptor closes in a process that never forked; with several
    /// processes it stays until the tree goes: they may share the description.)
    private func keepOpenMemoryFile(_ path: String) -> HostCallEffect? {
        guard state.files.refersTo({ if case .memoryFile(path) = $0 { return true } else { return false } }),
              let mount = state.memoryFiles.deepestMount(covering: path) else { return nil }
        // Unique among every process sharing the tree (and the images they exec).
        let hidden = (mount == "/" ? "" : mount) + "/\u{0}deleted-\(pid)-\(UInt64.random(in: 0 ... .max))"
        if let error = state.memoryFiles.rename(path, to: hidden) { return Self.fail(error) }
        state.files.renameMemoryFile(path, to: hidden)
        return .value(0)
    }

    func remove(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, directory: Bool) throws -> HostCallEffect {
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let path):
            // A unix socket's name: unlinking its path unbinds it (it has no file).
            if !directory, state.memoryFiles.socketNames.unbind(path) { return .value(0) }
            if state.memoryFiles.covers(path) {
                if !directory, let hidden = keepOpenMemoryFile(path) { return hidden }
                return state.memoryFiles.remove(path, directory: directory).map(Self.fail) ?? .value(0)
            }
            switch nameChange(path, removing: true) {
            case .failure(let error): return Self.fail(error)
            case .success(let change):
                defer { close(change.directory) }
                let refund = diskRefund(removing: change.name, in: change.directory)
                guard unlinkat(change.directory, change.name, directory ? 0x200 : 0) == 0 else { return Self.fail(Errno.current) }
                chargeDisk(-refund)
                return .value(0)
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
        return changingNames(source, target) { source, target in
            renameat(source.directory, source.name, target.directory, target.name) == 0 ? .value(0) : Self.fail(Errno.current)
        }
    }

    /// Runs `body` with two names in one writable grant (rename's, link's), and closes their
    /// directories: two grants are two mounts, so Linux's first answer is EXDEV; then each name
    /// must be changeable (EROFS, EBUSY).
    func changingNames(_ source: String, _ target: String, _ body: (NameChange, NameChange) -> HostCallEffect) -> HostCallEffect {
        switch (nameLocation(source, removing: true), nameLocation(target, removing: false)) {
        case (.success(let from), .success(let to)):
            guard from.0.grant.guestPath == to.0.grant.guestPath else {
                close(from.0.directory)
                close(to.0.directory)
                return Self.fail(.improperLink)
            }
            switch (Self.permitted(from), Self.permitted(to)) {
            case (.success(let source), .success(let target)):
                defer { close(source.directory); close(target.directory) }
                return body(source, target)
            case (.failure(let error), let other), (let other, .failure(let error)):
                if case .success(let change) = other { close(change.directory) }
                return Self.fail(error)
            }
        case (.failure(let error), let other), (let other, .failure(let error)):
            if case .success(let location) = other { close(location.0.directory) }
            return Self.fail(error)
        }
    }

    /// symlink/symlinkat: a link beneath a writable grant (the target is any string, as on
    /// Linux; the guest follows links in its own namespace, never the host's). In-memory
    /// directories hold no links (EPERM).
    func makeSymbolicLink(_ memory: GuestMemoryView, target address: UInt64, _ dirfd: Int64, path linkAddress: UInt64) throws -> HostCallEffect {
        let target = try memory.readCString(address, maxLength: 4095)
        guard !target.isEmpty else { return Self.fail(.noSuchFileOrDirectory) }
        switch try guestPath(dirfd, memory, linkAddress) {
        case .failure(let error): return Self.fail(error)
        case .success(let path):
            if state.memoryFiles.covers(path) { return Self.fail(.notPermitted) }
            switch nameChange(path, removing: false) {
            case .failure(let error): return Self.fail(error)
            case .success(let change):
                defer { close(change.directory) }
                if let allowance = diskAllowance, allowance < Self.diskEntryCharge { return Self.fail(.noSpace) }
                guard symlinkat(target, change.directory, change.name) == 0 else { return Self.fail(Errno.current) }
                chargeDisk(Self.diskEntryCharge)
                return .value(0)
            }
        }
    }

    /// link/linkat: a second name for a file, both names in one writable grant (EXDEV across
    /// grants, as across mounts). The old name's final link is followed only with
    /// AT_SYMLINK_FOLLOW, and then in the guest's namespace.
    func makeHardLink(_ oldDirectory: Int64, _ memory: GuestMemoryView, _ old: UInt64, _ newDirectory: Int64, _ new: UInt64,
                      flags: UInt64) throws -> HostCallEffect {
        guard flags & ~UInt64(0x400 | 0x1000) == 0 else { return Self.fail(.invalidArgument) }  // AT_SYMLINK_FOLLOW, AT_EMPTY_PATH
        guard case .success(var source) = try guestPath(oldDirectory, memory, old),
              case .success(let target) = try guestPath(newDirectory, memory, new) else { return Self.fail(.noSuchFileOrDirectory) }
        if state.memoryFiles.covers(source) || state.memoryFiles.covers(target) {
            // Within one in-memory directory: a copy under the new name (see `MemoryFileTree.link`).
            guard let mount = state.memoryFiles.deepestMount(covering: source),
                  mount == state.memoryFiles.deepestMount(covering: target) else { return Self.fail(.improperLink) }
            return state.memoryFiles.link(source, to: target).map { Self.fail($0) } ?? .value(0)
        }
        if flags & 0x400 != 0, let followed = fileSystem.followingFirstLink(in: source, includingLast: true) { source = followed }
        return changingNames(source, target) { source, target in
            if let allowance = diskAllowance, allowance < Self.diskEntryCharge { return Self.fail(.noSpace) }
            guard linkat(source.directory, source.name, target.directory, target.name, 0) == 0 else { return Self.fail(Errno.current) }
            chargeDisk(Self.diskEntryCharge)
            return .value(0)
        }
    }
}
