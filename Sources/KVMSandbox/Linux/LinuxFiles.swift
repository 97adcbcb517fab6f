import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// File system calls: the dispatch, guest paths, synthesized files and open (I/O, metadata and
/// names are in LinuxFileIO, LinuxFileMetadata and LinuxFileNames).
extension LinuxPersonality {
    /// The most bytes one read or write moves (a short count, as Linux allows).
    static let transferLimit = 1 << 20
    /// `AT_FDCWD`.
    static let currentDirectory: Int64 = -100

    /// `statx(dirfd, path, flags, mask, buffer)`.
    func statx(_ call: HostCall) throws -> HostCallEffect {
        let flags = call[2]
        guard flags & ~UInt64(0x100 | 0x800 | 0x1000 | 0x6000) == 0 else { return Self.fail(.invalidArgument) }
        return try statPath(call.descriptor(0), call.memory, path: call[1], follow: flags & 0x100 == 0,  // AT_SYMLINK_NOFOLLOW
                            emptyPath: flags & 0x1000 != 0) { try storeStatx($0, call.memory, at: call[4]) }
    }

    /// `dup3(old, new, flags)`: as `dup2`, but never to itself, and O_CLOEXEC may be asked.
    func duplicate3(_ old: Int64, _ new: Int64, flags: UInt64) -> HostCallEffect {
        guard flags & ~UInt64(O_CLOEXEC) == 0, old != new else { return Self.fail(.invalidArgument) }
        return duplicate(old, lowest: 0, at: new, closeOnExec: flags != 0)
    }

    /// A call that only checks its descriptor (`fsync`, `fdatasync`, `fadvise64`): 0 or EBADF.
    func checkDescriptor(_ fd: Int64) -> HostCallEffect {
        state.files[fd] == nil ? Self.fail(.badFileDescriptor) : .value(0)
    }

    // MARK: paths

    /// A guest path argument, made absolute and normalized against `dirfd` (or the cwd).
    func guestPath(_ dirfd: Int64, _ memory: GuestMemoryView, _ address: UInt64, allowEmpty: Bool = false) throws -> Result<String, Errno> {
        let raw = try memory.readCString(address, maxLength: 4095)
        if raw.isEmpty && !allowEmpty { return .failure(.noSuchFileOrDirectory) }
        if raw.hasPrefix("/") { return .success(FileSystemView.normalize(raw, cwd: "/")) }
        var base = state.cwd
        if dirfd != Self.currentDirectory {
            guard let directory = state.files[dirfd] else { return .failure(.badFileDescriptor) }
            guard case .directory = directory.kind else { return .failure(.notDirectory) }
            base = directory.path
        }
        return .success(FileSystemView.normalize(raw, cwd: base))
    }

    /// Synthesized files: devices and the few `/proc` and `/sys` files programs read.
    /// N for `/proc/self/fd/N`.
    static func procDescriptor(_ path: String) -> Int32? {
        switch path {
        case "/dev/stdin": return 0   // links to /proc/self/fd/0...2, as udev makes them
        case "/dev/stdout": return 1
        case "/dev/stderr": return 2
        default:
            guard path.hasPrefix("/proc/self/fd/") else { return nil }
            return Int32(path.dropFirst("/proc/self/fd/".count))
        }
    }

    /// What `readlink` of /dev/stdin, /dev/stdout or /dev/stderr answers.
    static func standardStreamLink(_ path: String) -> String? {
        switch path {
        case "/dev/stdin": "/proc/self/fd/0"
        case "/dev/stdout": "/proc/self/fd/1"
        case "/dev/stderr": "/proc/self/fd/2"
        default: nil
        }
    }

    func syntheticFile(_ path: String) -> OpenFile.Kind? {
        switch path {
        case "/dev/null": return .null
        case "/dev/zero": return .zero
        case "/dev/urandom", "/dev/random": return .random
        case "/proc/meminfo":
            let kib = space.memory.size >> 10, free = space.availableBytes >> 10
            return .memory(Array("MemTotal:       \(kib) kB\nMemFree:        \(free) kB\nMemAvailable:   \(free) kB\n".utf8))
        case "/sys/devices/system/cpu/online", "/sys/devices/system/cpu/possible":
            return .memory(Array((processors == 1 ? "0\n" : "0-\(processors - 1)\n").utf8))
        case "/proc/self/maps": return .memory(Array(memoryMaps().utf8))
        case _ where systemView && SystemView.synthesized[path] != nil:
            return .memory(Array((SystemView.synthesized[path] ?? "").utf8))
        case "/proc/self/fd":  // the open descriptors, as a directory (programs close or list them)
            return .directory(entries: Self.directoryRecords(state.files.entries.keys.sorted().map { (String($0), false) }), host: nil)
        default: return nil
        }
    }

    /// `/proc/self/maps` from the guest's page tables: runs of user pages with the same
    /// permissions and the same backing (the program, its loader, a mapped file, the stack);
    /// host-only pages are left out.
    func memoryMaps() -> String {
        // Images are listed at offset 0 throughout (their segments' file offsets are not kept).
        var named: [(range: Range<UInt64>, name: String, offset: UInt64?)] = imageRanges.enumerated().map { index, range in
            (range, index == 0 ? programPath : interpreterPath ?? "", nil)
        }
        named += state.fileMappings.map { ($0.start..<$0.end, $0.path, $0.offset) }
        named.sort { $0.range.lowerBound < $1.range.lowerBound }
        var next = 0
        func backing(_ page: UInt64) -> (name: String, offset: UInt64) {
            while next < named.count, named[next].range.upperBound <= page { next += 1 }
            if next < named.count, named[next].range.contains(page) {
                return (named[next].name, named[next].offset.map { $0 &+ (page - named[next].range.lowerBound) } ?? 0)
            }
            return page >= stackBottom && page < stackTop ? ("[stack]", 0)
                : page == GuestLayout.syscallStubPage ? ("[kvmsandbox syscall stub]", 0)
                : page == GuestLayout.mailboxPage || page == GuestLayout.doorbellPage ? ("[kvmsandbox mailbox and doorbell]", 0) : ("", 0)
        }
        var lines: [String] = []
        var run: (start: UInt64, end: UInt64, bits: String, name: String, offset: UInt64)?
        func flush() {
            guard let current = run else { return }
            let offset = String(current.offset, radix: 16)
            lines.append("\(String(current.start, radix: 16))-\(String(current.end, radix: 16)) \(current.bits) "
                         + String(repeating: "0", count: max(0, 8 - offset.count)) + offset + " 00:00 0"
                         + (current.name.isEmpty ? "" : "          \(current.name)"))
        }
        space.tables.forEachLeaf(from: 0, to: X86PageTables.userAddressLimit, memory: space.memory) { page, entry in
            guard entry & X86PageTables.user != 0 else { return }
            let bits = "r" + (entry & X86PageTables.writable != 0 ? "w" : "-") + (entry & X86PageTables.noExecute == 0 ? "x" : "-") + "p"
            let (name, offset) = backing(page)
            if let current = run, current.end == page, current.bits == bits, current.name == name {
                run?.end = page + PageSize.bytes
            } else {
                flush()
                run = (page, page + PageSize.bytes, bits, name, offset)
            }
        }
        flush()
        return lines.joined(separator: "\n") + "\n"
    }

    // MARK: open

    func open(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, flags: UInt64, mode: UInt64) throws -> HostCallEffect {
        let path: String
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        let flags = Int32(truncatingIfNeeded: flags)
        let keep = flags & (O_ACCMODE | O_APPEND | O_NONBLOCK)
        let closeOnExec = flags & O_CLOEXEC != 0
        var file: OpenFile
        if let descriptor = Self.procDescriptor(path) {
            // /proc/self/fd/N reopens what N refers to (a new description, from offset 0), with
            // the access the file allows, never more than the description's: a read-only
            // grant's file is EROFS for writing, as a read-only mount's is on Linux.
            guard let open = state.files[Int64(descriptor)] else { return Self.fail(.noSuchFileOrDirectory) }
            let wantsWrite = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
            if wantsWrite && !open.writable {
                switch open.kind {
                case .host, .directory(_, .some): return Self.fail(.readOnlyFileSystem)
                default: return Self.fail(.permissionDenied)
                }
            }
            file = open
            file.offset = 0
            if !wantsWrite && open.readable { file.statusFlags = (file.statusFlags & ~O_ACCMODE) | O_RDONLY }
        } else if let kind = syntheticFile(path) {
            file = OpenFile(kind: kind, statusFlags: keep, path: path)
        } else if state.memoryFiles.covers(path) {
            switch openInMemory(path, flags: flags) {
            case .failure(let error):
                if error == .noSuchFileOrDirectory { noteDenied(path) }  // the host's, hidden by a tmpfs
                return Self.fail(error)
            case .success(let kind): file = OpenFile(kind: kind, statusFlags: keep, path: path)
            }
        } else if fileSystem.locate(path) == nil {
            guard isAncestorOfAMount(path) else {
                noteDenied(path)
                return Self.fail(.noSuchFileOrDirectory)
            }
            guard flags & O_ACCMODE == O_RDONLY else { return Self.fail(.isDirectory) }
            file = OpenFile(kind: .directory(entries: syntheticDirectory(path), host: nil), statusFlags: keep, path: path)
        } else {
            // O_TMPFILE is not offered; O_PATH opens only a name (no reads, no writes); the rest
            // goes to openat2 beneath the grant.
            guard flags & 0o20000000 == 0 else { return Self.fail(Errno(rawValue: 95)) }
            if flags & Self.pathOnly != 0 { return try openPathOnly(path, flags: flags) }
            let hostFlags = flags & (O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_DIRECTORY | O_NOFOLLOW | O_APPEND)
            // O_NONBLOCK: opening a FIFO or a device must not block the vCPU thread; only regular
            // files and directories are offered (a FIFO, socket or device in a grant is EACCES).
            // The disk quota: a file this open creates costs an entry (it must exist already, or fit).
            var creates = false
            if let allowance = diskAllowance, flags & O_CREAT != 0 {
                if case .success(let existing) = fileSystem.openBeneath(path, flags: 0o10000000, mode: 0) {
                    close(existing.fd)
                } else {
                    guard allowance >= Self.diskEntryCharge else { return Self.fail(.noSpace) }
                    creates = true
                }
            }
            switch fileSystem.openBeneath(path, flags: hostFlags | O_NONBLOCK, mode: UInt32(truncatingIfNeeded: mode & ~state.umask)) {
            case .failure(let error): return Self.fail(error)
            case .success(let (fd, writableGrant)):
                if creates { chargeDisk(Self.diskEntryCharge) }
                let host = HostFile(fd: fd)
                var status = stat()
                guard fstat(fd, &status) == 0 else { return Self.fail(Errno.current) }
                let kind = status.st_mode & S_IFMT
                guard kind == S_IFREG || kind == S_IFDIR else { return Self.fail(.permissionDenied) }
                // A write by a Linux process without CAP_FSETID clears setuid (and group-executable
                // setgid); the host runs as root, so the kernel would keep them: drop them here.
                if kind == S_IFREG && flags & O_ACCMODE != O_RDONLY && Self.hasPrivilegeBits(status.st_mode) {
                    guard fchmod(fd, status.st_mode & 0o1777) == 0 else { return Self.fail(.permissionDenied) }
                }
                if status.st_mode & S_IFMT == S_IFDIR {
                    // Listed lazily from the host directory at the guest's offset (`directoryEntries`):
                    // the host keeps nothing per open directory, whatever its size.
                    file = OpenFile(kind: .directory(entries: [], host: host), statusFlags: keep, path: path)
                } else {
                    file = OpenFile(kind: .host(host), statusFlags: keep, path: path, executable: !writableGrant)
                }
            }
        }
        guard let fd = state.files.install(file, closeOnExec: closeOnExec) else { return Self.fail(.tooManyOpenFiles) }
        return .value(Int64(fd))
    }

    /// open(O_PATH) beneath a grant: a descriptor for fstat, fchdir, *at calls and
    /// /proc/self/fd, never for reading or writing (`OpenFile.readable` is false).
    func openPathOnly(_ path: String, flags: Int32) throws -> HostCallEffect {
        let hostFlags = Self.pathOnly | (flags & (O_DIRECTORY | O_NOFOLLOW))
        switch fileSystem.openBeneath(path, flags: hostFlags, mode: 0) {
        case .failure(let error): return Self.fail(error)
        case .success(let (fd, _)):
            let host = HostFile(fd: fd)
            var status = stat()
            guard fstat(fd, &status) == 0 else { return Self.fail(Errno.current) }
            let kind: OpenFile.Kind = status.st_mode & S_IFMT == S_IFDIR ? .directory(entries: [], host: host) : .host(host)
            let file = OpenFile(kind: kind, statusFlags: Self.pathOnly, path: path)
            guard let installed = state.files.install(file, closeOnExec: flags & O_CLOEXEC != 0) else { return Self.fail(.tooManyOpenFiles) }
            return .value(Int64(installed))
        }
    }

    /// Remembers a path the guest was refused that exists on the host (for the CLI's hint).
    /// The host's `/proc`, `/sys` and `/dev` are never worth a grant (they describe the host,
    /// not files the program needs): not remembered.
    func noteDenied(_ path: String) {
        guard deniedHostPaths.count < Sandbox.deniedPathsKept, !deniedHostPaths.contains(path),
              !["/proc", "/sys", "/dev"].contains(where: { path == $0 || path.hasPrefix($0 + "/") }),
              Glibc.access(path, F_OK) == 0 else { return }
        deniedHostPaths.append(path)
    }

    /// Whether a file mode carries setuid, or setgid with group execute (the bits a write drops).
    static func hasPrivilegeBits(_ mode: mode_t) -> Bool {
        mode & S_ISUID != 0 || mode & (S_ISGID | 0o010) == (S_ISGID | 0o010)
    }

    /// Whether a path is a directory only because grants or in-memory trees lie beneath it.
    func isAncestorOfAMount(_ path: String) -> Bool {
        let prefix = path == "/" ? "/" : path + "/"
        return fileSystem.isAncestorOfAMount(path) || state.memoryFiles.mounts.contains { $0.hasPrefix(prefix) }
            || systemView && SystemView.synthesized.keys.contains { $0.hasPrefix(prefix) }
    }

    /// A directory that exists only because grants lie beneath it: `.`, `..` and the next
    /// component of each such grant (a directory, unless it is a granted or synthesized file).
    func syntheticDirectory(_ path: String) -> [UInt8] {
        let prefix = path == "/" ? "/" : path + "/"
        var files: Set<String> = Set(fileSystem.mounts.filter { $0.fileName != nil }.map(\.guestPath))
        if systemView { files.formUnion(SystemView.synthesized.keys) }
        var names: [(String, Bool)] = []
        for mount in fileSystem.mounts.map(\.guestPath) + state.memoryFiles.mounts + files where mount.hasPrefix(prefix) {
            let next = String(mount.dropFirst(prefix.count).split(separator: "/").first ?? "")
            guard !next.isEmpty, !names.contains(where: { $0.0 == next }) else { continue }
            names.append((next, !files.contains(prefix + next)))
        }
        return Self.directoryRecords(names)
    }

    /// `getdents64` records for `.`, `..` and `entries` (name, is a directory).
    static func directoryRecords(_ entries: [(String, Bool)]) -> [UInt8] {
        var records: [UInt8] = []
        for (index, (name, isDirectory)) in ([(".", true), ("..", true)] + entries).enumerated() {
            let length = (19 + name.utf8.count + 1 + 7) & ~7
            var record = [UInt8](repeating: 0, count: length)
            record.replaceSubrange(0..<8, with: UInt64(index + 1).littleEndianBytes)
            record.replaceSubrange(8..<16, with: UInt64(index + 1).littleEndianBytes)
            record.replaceSubrange(16..<18, with: UInt16(length).littleEndianBytes)
            record[18] = isDirectory ? 4 : 8  // DT_DIR, DT_REG
            record.replaceSubrange(19..<19 + name.utf8.count, with: Array(name.utf8))
            records += record
        }
        return records
    }

    /// Opens a path in an in-memory tree: creating, truncating, or listing a directory.
    func openInMemory(_ path: String, flags: Int32) -> Result<OpenFile.Kind, Errno> {
        if flags & O_CREAT != 0 {
            if let error = state.memoryFiles.createFile(path, exclusive: flags & O_EXCL != 0,
                                                        truncate: flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY) {
                return .failure(error)
            }
        }
        switch state.memoryFiles.node(path) {
        case nil: return .failure(.noSuchFileOrDirectory)
        case .directory:
            guard flags & O_ACCMODE == O_RDONLY else { return .failure(.isDirectory) }
            let names = state.memoryFiles.children(path).map { name -> (String, Bool) in
                if case .directory = state.memoryFiles.node(path == "/" ? "/" + name : path + "/" + name) { return (name, true) }
                return (name, false)
            }
            return .success(.directory(entries: Self.directoryRecords(names), host: nil))
        case .file:
            if flags & O_DIRECTORY != 0 { return .failure(.notDirectory) }
            if flags & O_TRUNC != 0 && flags & O_CREAT == 0 && flags & O_ACCMODE != O_RDONLY {
                _ = state.memoryFiles.createFile(path, exclusive: false, truncate: true)
            }
            return .success(.memoryFile(path: path))
        }
    }
}
