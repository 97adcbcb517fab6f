import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// stat, access, readlink, getcwd/chdir and directory listings.
extension LinuxPersonality {
    func statDescriptor(_ fd: Int64, _ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        try statDescriptor(fd) { try store($0, memory, at: address) }
    }

    /// fstat of guest descriptor `fd`, handed to `write`.
    func statDescriptor(_ fd: Int64, write: (stat) throws -> Void) throws -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        var status = stat()
        switch file.kind {
        case .host(let host), .directory(_, .some(let host)), .connection(let host):
            guard fstat(host.fd, &status) == 0 else { return Self.fail(Errno.current) }
            status.st_blksize = 4096
        default:
            status = syntheticStatus(file.kind, path: file.path)
        }
        try write(status)
        return .value(0)
    }

    /// Device numbers of the file systems synthesized files seem to live on (Linux's
    /// anonymous devices 0:N), so that no two kinds share an identity: GNU `cmp` compares
    /// its output's dev/ino with /dev/null's.
    enum SyntheticDevice {
        static let devices = 5, pipes = 12, anonymous = 13, sockets = 8, proc = 21, directories = 22
    }

    /// The `stat` of a file the host synthesizes (devices with their real numbers, pipes and
    /// standard streams with inodes of their own, in-memory files and synthetic directories
    /// with the inode their path always has), the same whether reached by path or by fd.
    func syntheticStatus(_ kind: OpenFile.Kind, path: String) -> stat {
        var status = stat()
        status.st_nlink = 1
        status.st_blksize = 4096
        func device(_ minor: UInt, inode: UInt) {
            status.st_mode = S_IFCHR | 0o666
            status.st_rdev = (1 << 8) | minor  // major 1: mem devices
            status.st_dev = UInt(SyntheticDevice.devices)
            status.st_ino = inode
        }
        switch kind {
        case .null: device(3, inode: 4)
        case .zero: device(5, inode: 5)
        case .random: path == "/dev/random" ? device(8, inode: 6) : device(9, inode: 7)
        case .standardInput, .output, .pipe:
            status.st_mode = S_IFIFO | 0o600  // a pipe: stdio then buffers fully, as for a redirected stream
            status.st_dev = UInt(SyntheticDevice.pipes)
            switch kind {
            case .pipe(let id, _): status.st_ino = 0x1000 &+ UInt(truncatingIfNeeded: id)
            case .output(let stream): status.st_ino = 1 &+ UInt(truncatingIfNeeded: stream)
            default: status.st_ino = 1
            }
        case .epoll, .eventCounter:
            status.st_mode = 0o600  // anonymous inodes have no file type
            status.st_dev = UInt(SyntheticDevice.anonymous)
            status.st_ino = 1
        case .socket(let id):
            status.st_mode = S_IFSOCK | 0o777
            status.st_dev = UInt(SyntheticDevice.sockets)
            status.st_ino = 0x1000 &+ UInt(truncatingIfNeeded: id)
        case .memory(let contents):
            status.st_mode = S_IFREG | 0o444
            status.st_size = contents.count
            status.st_dev = UInt(SyntheticDevice.proc)
            status.st_ino = Self.stableInode(path)
        case .memoryFile(let path):
            status = state.memoryFiles.status(path) ?? status
        case .directory:
            if state.memoryFiles.covers(path), let found = state.memoryFiles.status(path) { return found }
            status.st_mode = S_IFDIR | 0o555
            status.st_nlink = 2
            status.st_dev = UInt(SyntheticDevice.directories)
            status.st_ino = Self.stableInode(path)
        case .host, .connection:
            break  // real files: fstat
        }
        return status
    }

    /// An inode number for a synthesized path: the same in every process (not Swift's seeded hash).
    static func stableInode(_ path: String) -> UInt {
        UInt(truncatingIfNeeded: contentHash(Array(path.utf8)[...]) | 1)
    }

    func statPath(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, into out: UInt64,
                  follow: Bool, emptyPath: Bool) throws -> HostCallEffect {
        try statPath(dirfd, memory, path: address, follow: follow, emptyPath: emptyPath) { try store($0, memory, at: out) }
    }

    /// stat of a guest path (or of `dirfd` for an empty one with AT_EMPTY_PATH), handed to `write`.
    func statPath(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, follow: Bool, emptyPath: Bool,
                  write: (stat) throws -> Void) throws -> HostCallEffect {
        let raw = try memory.readCString(address, maxLength: 4095)
        if raw.isEmpty && emptyPath { return try statDescriptor(dirfd, write: write) }
        let path: String
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        var status = stat()
        if let descriptor = Self.procDescriptor(path) {
            guard state.files[Int64(descriptor)] != nil else { return Self.fail(.noSuchFileOrDirectory) }
            // Followed, the magic link is the open file itself; not followed, a link to it.
            if follow { return try statDescriptor(Int64(descriptor), write: write) }
            status.st_mode = S_IFLNK | 0o777
            status.st_blksize = 4096
        } else if let kind = syntheticFile(path) {
            status = syntheticStatus(kind, path: path)
        } else if state.memoryFiles.covers(path) {
            guard let found = state.memoryFiles.status(path) else {
                noteDenied(path)  // the host's, hidden by a tmpfs
                return Self.fail(.noSuchFileOrDirectory)
            }
            status = found
        } else if fileSystem.locate(path) == nil {
            guard isAncestorOfAMount(path) else {
                noteDenied(path)
                return Self.fail(.noSuchFileOrDirectory)
            }
            status = syntheticStatus(.directory(entries: [], host: nil), path: path)
        } else {
            let flags = 0o10000000 /* O_PATH */ | (follow ? 0 : O_NOFOLLOW)
            switch fileSystem.open(path, flags: flags, mode: 0) {
            case .failure(let error): return Self.fail(error)
            case .success(let fd):
                defer { close(fd) }
                guard fstat(fd, &status) == 0 else { return Self.fail(Errno.current) }
            }
        }
        status.st_blksize = 4096
        try write(status)
        return .value(0)
    }

    /// Writes `status` as the kernel's `struct statx` (256 bytes; every basic field).
    func storeStatx(_ status: stat, _ memory: GuestMemoryView, at address: UInt64) throws {
        var bytes = [UInt8](repeating: 0, count: 256)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            bytes.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: value.littleEndianBytes)
        }
        put(UInt32(0x7ff), 0)                                   // STATX_BASIC_STATS
        put(UInt32(truncatingIfNeeded: status.st_blksize), 4)
        put(UInt32(truncatingIfNeeded: status.st_nlink), 16)
        put(status.st_uid, 20)
        put(status.st_gid, 24)
        put(UInt16(truncatingIfNeeded: status.st_mode), 28)
        put(UInt64(status.st_ino), 32)
        put(UInt64(bitPattern: Int64(status.st_size)), 40)
        put(UInt64(bitPattern: Int64(status.st_blocks)), 48)
        for (offset, time) in [(64, status.st_atim), (96, status.st_ctim), (112, status.st_mtim)] {
            put(Int64(time.tv_sec), offset)
            put(UInt32(truncatingIfNeeded: time.tv_nsec), offset + 8)
        }
        put(UInt32(truncatingIfNeeded: status.st_rdev >> 8 & 0xfff), 128)
        put(UInt32(truncatingIfNeeded: status.st_rdev & 0xff), 132)
        put(UInt32(truncatingIfNeeded: status.st_dev >> 8 & 0xfff), 136)
        put(UInt32(truncatingIfNeeded: status.st_dev & 0xff), 140)
        try memory.write(bytes, to: address)
    }

    /// Writes a host `struct stat` (the x86-64 kernel layout, 144 bytes) into guest memory.
    func store(_ status: stat, _ memory: GuestMemoryView, at address: UInt64) throws {
        let bytes = withUnsafeBytes(of: status) { Array($0) }
        try memory.write(bytes, to: address)
    }

    func access(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, mode: UInt64) throws -> HostCallEffect {
        let path: String
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        if syntheticFile(path) != nil { return .value(0) }
        if state.memoryFiles.covers(path) { return state.memoryFiles.node(path) == nil ? Self.fail(.noSuchFileOrDirectory) : .value(0) }
        guard let (mount, _) = fileSystem.locate(path) else {
            return isAncestorOfAMount(path) && mode & 2 == 0 ? .value(0) : Self.fail(.noSuchFileOrDirectory)
        }
        if mode & 2 != 0 && !mount.writable { return Self.fail(.readOnlyFileSystem) }
        switch fileSystem.resolve(path, flags: 0o10000000, mode: 0, forChange: mode & 2 != 0) {
        case .failure(let error): return Self.fail(error)
        case .success(let resolved):
            let fd = resolved.fd
            defer { close(fd) }
            var status = stat()
            guard fstat(fd, &status) == 0 else { return Self.fail(Errno.current) }
            // The guest runs as root: execute needs some execute bit, like Linux.
            if mode & 1 != 0 && status.st_mode & 0o111 == 0 && status.st_mode & S_IFMT != S_IFDIR { return Self.fail(.permissionDenied) }
            return .value(0)
        }
    }

    func readLink(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, into buffer: UInt64, size: UInt64) throws -> HostCallEffect {
        guard Int64(bitPattern: size) > 0 else { return Self.fail(.invalidArgument) }
        let path: String
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        var target: [UInt8]
        if path == "/proc/self/exe" {
            target = Array(FileSystemView.normalize(programPath, cwd: state.cwd).utf8)
        } else if let link = Self.standardStreamLink(path) {
            target = Array(link.utf8)
        } else if let descriptor = Self.procDescriptor(path) {
            guard let file = state.files[Int64(descriptor)] else { return Self.fail(.noSuchFileOrDirectory) }
            switch file.kind {
            case .pipe(let id, _): target = Array("pipe:[\(id)]".utf8)
            case .standardInput, .output: target = Array("pipe:[\(descriptor)]".utf8)
            case .epoll: target = Array("anon_inode:[eventpoll]".utf8)
            case .eventCounter: target = Array("anon_inode:[eventfd]".utf8)
            default: target = Array((file.path.isEmpty ? "/" : file.path).utf8)
            }
        } else {
            if state.memoryFiles.covers(path) {
                return Self.fail(state.memoryFiles.node(path) == nil ? .noSuchFileOrDirectory : .invalidArgument)
            }
            guard fileSystem.locate(path) != nil else {
                return Self.fail(isAncestorOfAMount(path) || syntheticFile(path) != nil ? .invalidArgument : .noSuchFileOrDirectory)
            }
            switch fileSystem.open(path, flags: 0o10000000 | O_NOFOLLOW, mode: 0) {
            case .failure(let error): return Self.fail(error)
            case .success(let fd):
                defer { close(fd) }
                target = [UInt8](repeating: 0, count: 4096)
                let n = target.withUnsafeMutableBytes { readlinkat(fd, "", $0.baseAddress!.assumingMemoryBound(to: CChar.self), 4096) }
                guard n >= 0 else { return Self.fail(Errno.current == .noSuchFileOrDirectory ? .invalidArgument : Errno.current) }
                target.removeSubrange(n...)
            }
        }
        let count = min(target.count, Int(min(size, 4096)))
        try memory.write(Array(target.prefix(count)), to: buffer)
        return .value(Int64(count))
    }

    func currentWorkingDirectory(_ memory: GuestMemoryView, into buffer: UInt64, size: UInt64) throws -> HostCallEffect {
        let bytes = Array(state.cwd.utf8) + [0]
        guard UInt64(bytes.count) <= size else { return .value(-Int64(ERANGE)) }
        try memory.write(bytes, to: buffer)
        return .value(Int64(bytes.count))
    }

    func changeDirectory(_ memory: GuestMemoryView, path address: UInt64) throws -> HostCallEffect {
        let path: String
        switch try guestPath(Self.currentDirectory, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        if state.memoryFiles.covers(path) {
            guard case .directory = state.memoryFiles.node(path) else { return Self.fail(.noSuchFileOrDirectory) }
        } else if fileSystem.locate(path) == nil {
            guard isAncestorOfAMount(path) else { return Self.fail(.noSuchFileOrDirectory) }
        } else {
            switch fileSystem.open(path, flags: 0o10000000 | O_DIRECTORY, mode: 0) {
            case .failure(let error): return Self.fail(error)
            case .success(let fd): close(fd)
            }
        }
        state.cwd = path
        return .value(0)
    }

    func directoryEntries(fd: Int64, _ memory: GuestMemoryView, into address: UInt64, count: UInt64) throws -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        guard case .directory(let entries, let host) = file.kind else { return Self.fail(.notDirectory) }
        guard file.readable else { return Self.fail(.badFileDescriptor) }  // O_PATH
        if let host { return try hostDirectoryEntries(fd: fd, host, at: file.offset, memory, into: address, count: count) }
        var offset = Int(min(file.offset, UInt64(entries.count)))
        let start = offset
        let limit = Int(min(count, UInt64(Self.transferLimit)))
        while offset + 19 <= entries.count {
            let length = Int(UInt16(littleEndianBytes: entries[offset + 16..<offset + 18]))
            guard length > 0, offset + length <= entries.count, offset + length - start <= limit else { break }
            offset += length
        }
        if offset == start && offset < entries.count { return Self.fail(.invalidArgument) }  // buffer too small
        try memory.write(Array(entries[start..<offset]), to: address)
        state.files.update(fd) { $0.offset = UInt64(offset) }
        return .value(Int64(offset - start))
    }

    /// `getdents64` of a host directory from the guest's offset (the `d_off` of the last record
    /// it was given, 0 at first): at most `count` bytes (capped at the transfer limit) are read
    /// into a buffer and copied to the guest, and nothing is kept. A private descriptor of the
    /// directory is opened for each call, since forks and dup'd descriptions share `host` and
    /// their positions must not mix.
    func hostDirectoryEntries(fd: Int64, _ host: HostFile, at offset: UInt64, _ memory: GuestMemoryView,
                              into address: UInt64, count: UInt64) throws -> HostCallEffect {
        let directory = openat(host.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { return Self.fail(Errno.current) }
        defer { close(directory) }
        if offset != 0 && lseek(directory, off_t(Int64(bitPattern: offset)), SEEK_SET) < 0 { return Self.fail(Errno.current) }
        guard count > 0 else { return Self.fail(.invalidArgument) }  // no room for a record, as Linux
        var buffer = [UInt8](repeating: 0, count: Int(min(count, UInt64(Self.transferLimit))))
        let n = buffer.withUnsafeMutableBytes { chost_getdents64(directory, $0.baseAddress!, UInt($0.count)) }
        guard n >= 0 else { return Self.fail(Errno.current) }
        guard n > 0 else { return .value(0) }
        // The next offset: the last record's d_off (records are d_ino, d_off, d_reclen, d_type, name).
        var cursor = 0, next = offset
        while cursor + 19 <= n {
            let length = Int(UInt16(littleEndianBytes: buffer[cursor + 16..<cursor + 18]))
            guard length > 0, cursor + length <= n else { break }
            next = UInt64(littleEndianBytes: buffer[cursor + 8..<cursor + 16])
            cursor += length
        }
        try memory.write(Array(buffer[0..<cursor]), to: address)
        state.files.update(fd) { $0.offset = next }
        return .value(Int64(cursor))
    }
}
