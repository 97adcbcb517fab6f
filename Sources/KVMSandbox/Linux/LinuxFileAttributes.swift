import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Calls that change a file without changing a name: modes (`chmod` family), times
/// (`utimensat` family), sizes (`truncate`, `ftruncate`, `fallocate`), owners (`chown` family);
/// and `fchdir`, `statfs`. A host file is changed only beneath a writable grant, found by
/// following links in the guest's namespace (`FileSystemView.resolve(forChange:)`), and then
/// through its own descriptor's `/proc/self/fd` link, so the host never follows a link itself.
extension LinuxPersonality {
    /// `utime(path, struct utimbuf *)`: access and modification times in seconds (now when null).
    func setTimes(path: UInt64, utimbuf address: UInt64, _ memory: GuestMemoryView) throws -> HostCallEffect {
        guard address != 0 else {
            return try setTimes(Self.currentDirectory, memory, path: path, times: 0, flags: 0, microseconds: false)
        }
        // struct utimbuf { actime, modtime } (seconds) as struct timeval pairs.
        let actime = try memory.load(UInt64.self, at: address), modtime = try memory.load(UInt64.self, at: address &+ 8)
        return try setTimes(Self.currentDirectory, memory, path: path, flags: 0,
                            values: [timespec(tv_sec: Int(bitPattern: UInt(actime)), tv_nsec: 0),
                                     timespec(tv_sec: Int(bitPattern: UInt(modtime)), tv_nsec: 0)])
    }

    // MARK: finding the file

    /// What a call changes: a host file (an `O_PATH` descriptor the caller closes, opened
    /// beneath a writable grant), an in-memory file, or an error.
    enum Target {
        case host(Int32)
        case memory(String)
    }

    /// The file `path` (relative to `dirfd`; empty with `AT_EMPTY_PATH`: `dirfd` itself) names,
    /// for a change. `follow`: a final link is followed (else the link itself is changed).
    func changeTarget(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, flags: UInt64,
                      follow: Bool) throws -> Result<Target, Errno> {
        if address == 0 { return descriptorTarget(dirfd) }  // a call on a descriptor
        if flags & 0x1000 != 0, try memory.readCString(address, maxLength: 4095).isEmpty {
            return descriptorTarget(dirfd)  // AT_EMPTY_PATH
        }
        let path: String
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return .failure(error)
        case .success(let value): path = value
        }
        if let descriptor = Self.procDescriptor(path) { return descriptorTarget(Int64(descriptor)) }
        if syntheticFile(path) != nil { return .failure(.readOnlyFileSystem) }
        if state.memoryFiles.covers(path) {
            return state.memoryFiles.node(path) == nil ? .failure(.noSuchFileOrDirectory) : .success(.memory(path))
        }
        guard fileSystem.locate(path) != nil else {
            return .failure(isAncestorOfAMount(path) ? .readOnlyFileSystem : .noSuchFileOrDirectory)
        }
        let open = Self.pathOnly | (follow ? 0 : O_NOFOLLOW)
        return fileSystem.resolve(path, flags: open, mode: 0, forChange: true).map { .host($0.fd) }
    }

    /// The file behind descriptor `fd`, for a change: only a host file opened through a
    /// writable grant (its path is resolved again, as the grant decides), or an in-memory file.
    func descriptorTarget(_ fd: Int64) -> Result<Target, Errno> {
        guard let file = state.files[fd] else { return .failure(.badFileDescriptor) }
        switch file.kind {
        case .memoryFile(let path): return .success(.memory(path))
        case .host(let host), .directory(_, .some(let host)):
            // The description's own inode, if the grant it lies in is writable.
            guard case .success(let resolved) = fileSystem.resolve(file.path, flags: Self.pathOnly, mode: 0, forChange: true) else {
                return .failure(.readOnlyFileSystem)
            }
            var mine = stat(), found = stat()
            let same = fstat(host.fd, &mine) == 0 && fstat(resolved.fd, &found) == 0 && mine.st_dev == found.st_dev && mine.st_ino == found.st_ino
            if same { return .success(.host(resolved.fd)) }
            close(resolved.fd)
            return .failure(.readOnlyFileSystem)  // renamed since: not provably in a writable grant
        case .directory(_, nil):
            return state.memoryFiles.covers(file.path) ? .success(.memory(file.path)) : .failure(.readOnlyFileSystem)
        default:
            return .failure(.readOnlyFileSystem)
        }
    }

    /// `O_PATH`: a descriptor that only names a file.
    static let pathOnly: Int32 = 0o10000000

    /// `/proc/self/fd/N` of a host descriptor: the exact inode, never a path the host resolves.
    static func magicPath(_ fd: Int32) -> String { "/proc/self/fd/\(fd)" }

    // MARK: modes, owners, times

    /// chmod: permission bits only (a guest never sets setuid, setgid or sticky).
    func changeMode(_ dirfd: Int64, _ memory: GuestMemoryView, path: UInt64, mode: UInt64, flags: UInt64) throws -> HostCallEffect {
        guard flags & ~UInt64(0x1000 | 0x100) == 0 else { return Self.fail(.invalidArgument) }
        if flags & 0x100 != 0 { return Self.fail(.notSupported) }  // AT_SYMLINK_NOFOLLOW: as Linux, links have no mode
        return applyMode(try changeTarget(dirfd, memory, path: path, flags: flags, follow: true), mode: mode)
    }

    func changeMode(fd: Int64, mode: UInt64) -> HostCallEffect {
        applyMode(descriptorTarget(fd), mode: mode)
    }

    private func applyMode(_ target: Result<Target, Errno>, mode: UInt64) -> HostCallEffect {
        switch target {
        case .failure(let error): return Self.fail(error)
        case .success(.memory): return .value(0)  // in-memory files have no modes to keep
        case .success(.host(let fd)):
            defer { close(fd) }
            return chmod(Self.magicPath(fd), mode_t(mode & 0o777)) == 0 ? .value(0) : Self.fail(Errno.current)
        }
    }

    /// chown: the guest may "change" an owner only to what it already is (-1 or the current
    /// id); the host's owners never change (EPERM otherwise, as for an unprivileged user).
    func changeOwner(_ dirfd: Int64, _ memory: GuestMemoryView, path: UInt64, user: UInt64, group: UInt64, flags: UInt64) throws -> HostCallEffect {
        guard flags & ~UInt64(0x1000 | 0x100) == 0 else { return Self.fail(.invalidArgument) }
        let target = path == 0 ? descriptorTarget(dirfd) : try changeTarget(dirfd, memory, path: path, flags: flags, follow: flags & 0x100 == 0)
        var status = stat()
        switch target {
        case .failure(let error): return Self.fail(error)
        case .success(.memory(let path)): status = state.memoryFiles.status(path) ?? status
        case .success(.host(let fd)):
            defer { close(fd) }
            guard fstat(fd, &status) == 0 else { return Self.fail(Errno.current) }
        }
        let keepsUser = UInt32(truncatingIfNeeded: user) == UInt32.max || UInt32(truncatingIfNeeded: user) == status.st_uid
        let keepsGroup = UInt32(truncatingIfNeeded: group) == UInt32.max || UInt32(truncatingIfNeeded: group) == status.st_gid
        return keepsUser && keepsGroup ? .value(0) : Self.fail(.notPermitted)
    }

    /// utimensat (`times`: two timespecs, NULL for now; UTIME_NOW and UTIME_OMIT as Linux) and
    /// utimes/futimesat (`microseconds`: two timevals).
    func setTimes(_ dirfd: Int64, _ memory: GuestMemoryView, path: UInt64, times: UInt64, flags: UInt64,
                  microseconds: Bool) throws -> HostCallEffect {
        var values: [timespec]?
        if times != 0 {
            var parsed: [timespec] = []
            for index in 0..<2 {
                let seconds = try memory.load(UInt64.self, at: times &+ UInt64(index * 16))
                let fraction = try memory.load(UInt64.self, at: times &+ UInt64(index * 16 + 8))
                let special = !microseconds && (fraction == 0x3fff_fffe || fraction == 0x3fff_ffff)  // UTIME_OMIT, UTIME_NOW
                guard special || fraction < (microseconds ? 1_000_000 : 1_000_000_000) else { return Self.fail(.invalidArgument) }
                let nanoseconds = microseconds ? fraction * 1000 : fraction
                parsed.append(timespec(tv_sec: Int(bitPattern: UInt(seconds)), tv_nsec: Int(bitPattern: UInt(nanoseconds))))
            }
            values = parsed
        }
        return try setTimes(dirfd, memory, path: path, flags: flags, values: values)
    }

    func setTimes(_ dirfd: Int64, _ memory: GuestMemoryView, path: UInt64, flags: UInt64, values: [timespec]?) throws -> HostCallEffect {
        guard flags & ~UInt64(0x1000 | 0x100) == 0 else { return Self.fail(.invalidArgument) }
        switch try changeTarget(dirfd, memory, path: path, flags: flags, follow: flags & 0x100 == 0) {
        case .failure(let error): return Self.fail(error)
        case .success(.memory): return .value(0)  // in-memory files keep no times
        case .success(.host(let fd)):
            defer { close(fd) }
            var status = stat()
            // A link's own times (AT_SYMLINK_NOFOLLOW on a link) are not offered: its magic path
            // would lead to what it points at.
            if fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFLNK { return Self.fail(Errno(rawValue: 95)) }
            let result = values.map { utimensat(AT_FDCWD, Self.magicPath(fd), $0, 0) } ?? utimensat(AT_FDCWD, Self.magicPath(fd), nil, 0)
            return result == 0 ? .value(0) : Self.fail(Errno.current)
        }
    }

    // MARK: sizes

    /// ftruncate: a writable description; growth counts against the disk quota (as blocks).
    func truncate(fd: Int64, length: Int64) -> HostCallEffect {
        guard length >= 0 else { return Self.fail(.invalidArgument) }
        guard let file = state.files[fd], file.writable else { return Self.fail(.invalidArgument) }  // EINVAL: not open for writing
        switch file.kind {
        case .host(let host): return resize(host.fd, to: length)
        case .memoryFile(let path):
            return state.memoryFiles.resize(path, to: length).map(Self.fail) ?? .value(0)
        case .directory: return Self.fail(.isDirectory)
        default: return Self.fail(.invalidArgument)
        }
    }

    /// truncate: the path opened for writing beneath a writable grant, then resized.
    func truncatePath(_ memory: GuestMemoryView, path address: UInt64, length: Int64) throws -> HostCallEffect {
        guard length >= 0 else { return Self.fail(.invalidArgument) }
        let path: String
        switch try guestPath(Self.currentDirectory, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        if state.memoryFiles.covers(path) { return state.memoryFiles.resize(path, to: length).map(Self.fail) ?? .value(0) }
        guard fileSystem.locate(path) != nil else { return Self.fail(isAncestorOfAMount(path) ? .readOnlyFileSystem : .noSuchFileOrDirectory) }
        switch fileSystem.openBeneath(path, flags: O_WRONLY | O_NONBLOCK, mode: 0) {
        case .failure(let error): return Self.fail(error)
        case .success(let (fd, _)):
            defer { close(fd) }
            var status = stat()
            guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return Self.fail(.invalidArgument) }
            return resize(fd, to: length)
        }
    }

    /// Resizes a host file within the disk quota (a sparse extension costs no blocks).
    private func resize(_ fd: Int32, to length: Int64) -> HostCallEffect {
        var before = stat(), after = stat()
        guard fstat(fd, &before) == 0 else { return Self.fail(Errno.current) }
        if let allowance = diskAllowance, length > Int64(before.st_size), allowance <= 0 { return Self.fail(.noSpace) }
        guard ftruncate(fd, off_t(length)) == 0 else { return Self.fail(Errno.current) }
        if fstat(fd, &after) == 0 { chargeDisk(Int(after.st_blocks - before.st_blocks) * 512) }
        return .value(0)
    }

    /// fallocate: mode 0 or FALLOC_FL_KEEP_SIZE on a writable host file, within the disk quota;
    /// the rest (punching holes, in-memory files) is EOPNOTSUPP, which programs fall back from.
    func allocate(fd: Int64, mode: UInt64, offset: Int64, length: Int64) -> HostCallEffect {
        guard offset >= 0, length > 0, offset <= Int64.max - length else { return Self.fail(.invalidArgument) }
        guard let file = state.files[fd], file.writable else { return Self.fail(.badFileDescriptor) }
        guard case .host(let host) = file.kind, mode & ~1 == 0 else { return Self.fail(Errno(rawValue: 95)) }
        if let allowance = diskAllowance, Int64(allowance) < length { return Self.fail(.noSpace) }
        var before = stat(), after = stat()
        guard fstat(host.fd, &before) == 0 else { return Self.fail(Errno.current) }
        guard chost_fallocate(host.fd, Int32(mode), Int(offset), Int(length)) == 0 else { return Self.fail(Errno.current) }
        if fstat(host.fd, &after) == 0 { chargeDisk(Int(after.st_blocks - before.st_blocks) * 512) }
        return .value(0)
    }

    // MARK: directories and file systems

    /// fchdir: to a directory descriptor's path.
    func changeDirectory(fd: Int64) -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        guard case .directory = file.kind else { return Self.fail(.notDirectory) }
        state.cwd = file.path.isEmpty ? "/" : file.path
        return .value(0)
    }

    /// The kernel's `struct statfs` (x86-64): f_type, f_bsize, f_blocks, f_bfree, f_bavail,
    /// f_files, f_ffree, f_fsid, f_namelen, f_frsize, f_flags, then four spare words.
    struct FileSystemNumbers {
        var words = [UInt64](repeating: 0, count: 15)
        static let tmpfs: UInt64 = 0x0102_1994, pipefs: UInt64 = 0x5049_5045

        /// A small file system of the sandbox's own (`type`), read-only or not.
        init(type: UInt64, blocks: UInt64 = 0, free: UInt64 = 0, files: UInt64 = 0, freeFiles: UInt64 = 0, readOnly: Bool = false) {
            words[0] = type
            words[1] = 4096
            (words[2], words[3], words[4]) = (blocks, free, free)
            (words[5], words[6]) = (files, freeFiles)
            words[8] = 255
            words[9] = 4096
            words[10] = readOnly ? 1 : 0  // ST_RDONLY
        }

        /// The host file system's numbers for `fd`, or nil.
        init?(host fd: Int32) {
            let result = words.withUnsafeMutableBytes { chost_fstatfs(fd, $0.baseAddress!) }
            if result != 0 { return nil }
        }
    }

    /// statfs of a path: the host file system's numbers for a grant, tmpfs's for an in-memory
    /// tree (its capacity), a small read-only one elsewhere.
    func fileSystemStatus(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, into buffer: UInt64) throws -> HostCallEffect {
        let path: String
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        if state.memoryFiles.covers(path) {
            guard state.memoryFiles.node(path) != nil else { return Self.fail(.noSuchFileOrDirectory) }
            return try store(memoryFileSystemNumbers(), memory, at: buffer)
        }
        if fileSystem.locate(path) != nil {
            switch fileSystem.open(path, flags: Self.pathOnly, mode: 0) {
            case .failure(let error): return Self.fail(error)
            case .success(let fd):
                defer { close(fd) }
                guard let numbers = FileSystemNumbers(host: fd) else { return Self.fail(Errno.current) }
                return try store(numbers, memory, at: buffer)
            }
        }
        guard syntheticFile(path) != nil || isAncestorOfAMount(path) || Self.procDescriptor(path) != nil else {
            return Self.fail(.noSuchFileOrDirectory)
        }
        return try store(FileSystemNumbers(type: FileSystemNumbers.tmpfs, readOnly: true), memory, at: buffer)
    }

    func fileSystemStatus(fd: Int64, _ memory: GuestMemoryView, into buffer: UInt64) throws -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        switch file.kind {
        case .host(let host), .directory(_, .some(let host)), .connection(let host):
            guard let numbers = FileSystemNumbers(host: host.fd) else { return Self.fail(Errno.current) }
            return try store(numbers, memory, at: buffer)
        case .memoryFile:
            return try store(memoryFileSystemNumbers(), memory, at: buffer)
        case .directory(_, nil) where state.memoryFiles.covers(file.path):
            return try store(memoryFileSystemNumbers(), memory, at: buffer)
        default:
            return try store(FileSystemNumbers(type: FileSystemNumbers.pipefs), memory, at: buffer)
        }
    }

    /// An in-memory tree's numbers: its capacity, what is used.
    func memoryFileSystemNumbers() -> FileSystemNumbers {
        let capacity = UInt64(max(state.memoryFiles.capacity, 0)) / 4096, used = UInt64(max(state.memoryFiles.used, 0)) / 4096
        let nodes = UInt64(state.memoryFiles.nodeCount), maximum = UInt64(MemoryFileSystem.maximumNodes)
        return FileSystemNumbers(type: FileSystemNumbers.tmpfs, blocks: capacity, free: capacity > used ? capacity - used : 0,
                                 files: maximum, freeFiles: maximum > nodes ? maximum - nodes : 0)
    }

    /// Writes a `struct statfs` (120 bytes) into guest memory.
    func store(_ numbers: FileSystemNumbers, _ memory: GuestMemoryView, at address: UInt64) throws -> HostCallEffect {
        try memory.write([UInt8](littleEndianWords: numbers.words), to: address)
        return .value(0)
    }
}
