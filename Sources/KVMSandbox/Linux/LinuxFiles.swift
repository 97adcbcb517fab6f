import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// File system calls: open/read/write/stat/getdents64/... on the fd table, beneath the grants.
extension LinuxPersonality {
    /// The most bytes one read or write moves (a short count, as Linux allows).
    static let transferLimit = 1 << 20
    /// `AT_FDCWD`.
    static let currentDirectory: Int64 = -100

    func handleFiles(_ call: HostCall) throws -> HostCallEffect? {
        let memory = call.memory
        switch call.number {
        case 0: return try read(fd: call.descriptor(0), memory, into: call[1], count: call[2], at: nil)
        case 17: return try read(fd: call.descriptor(0), memory, into: call[1], count: call[2], at: call[3])
        case 1: return try write(fd: call.descriptor(0), memory, from: call[1], count: call[2], at: nil)
        case 18: return try write(fd: call.descriptor(0), memory, from: call[1], count: call[2], at: call[3])
        case 19, 20: return try vector(call.number == 20, fd: call.descriptor(0), memory, call[1], count: call[2])
        case 2: return try open(Self.currentDirectory, memory, path: call[0], flags: call[1], mode: call[2])
        case 257: return try open(call.descriptor(0), memory, path: call[1], flags: call[2], mode: call[3])
        case 3: return state.files.close(call.descriptor(0)) ? .value(0) : Self.fail(.badFileDescriptor)
        case 8: return seek(fd: call.descriptor(0), offset: call.descriptor(1), whence: call[2])
        case 5: return try statDescriptor(call.descriptor(0), memory, into: call[1])
        case 4, 6: return try statPath(Self.currentDirectory, memory, path: call[0], into: call[1], follow: call.number == 4, emptyPath: false)
        case 262: return try statPath(call.descriptor(0), memory, path: call[1], into: call[2],
                                      follow: call[3] & 0x100 == 0, emptyPath: call[3] & 0x1000 != 0)
        case 332: return Self.fail(.noFunction)  // statx: glibc and musl fall back to newfstatat
        case 21: return try access(Self.currentDirectory, memory, path: call[0], mode: call[1])
        case 269, 439: return try access(call.descriptor(0), memory, path: call[1], mode: call[2])
        case 89: return try readLink(Self.currentDirectory, memory, path: call[0], into: call[1], size: call[2])
        case 267: return try readLink(call.descriptor(0), memory, path: call[1], into: call[2], size: call[3])
        case 79: return try currentWorkingDirectory(memory, into: call[0], size: call[1])
        case 80: return try changeDirectory(memory, path: call[0])
        case 217: return try directoryEntries(fd: call.descriptor(0), memory, into: call[1], count: call[2])
        case 72: return control(fd: call.descriptor(0), command: call[1], argument: call[2])
        case 32: return duplicate(call.descriptor(0), lowest: 0, at: nil, closeOnExec: false)
        case 33: return duplicate(call.descriptor(0), lowest: 0, at: call.descriptor(1), closeOnExec: false, dup2: true)
        case 292: return call[2] & ~UInt64(O_CLOEXEC) != 0 || call[0] == call[1] ? Self.fail(.invalidArgument)
            : duplicate(call.descriptor(0), lowest: 0, at: call.descriptor(1), closeOnExec: call[2] != 0)
        case 16: return try ioctl(fd: call.descriptor(0), request: call[1], memory, argument: call[2])
        case 221: return state.files[call.descriptor(0)] == nil ? Self.fail(.badFileDescriptor) : .value(0)  // fadvise64
        case 74, 75: return state.files[call.descriptor(0)] == nil ? Self.fail(.badFileDescriptor) : .value(0)  // fsync, fdatasync
        case 83: return try makeDirectory(Self.currentDirectory, memory, path: call[0], mode: call[1])
        case 258: return try makeDirectory(call.descriptor(0), memory, path: call[1], mode: call[2])
        case 87: return try remove(Self.currentDirectory, memory, path: call[0], directory: false)
        case 84: return try remove(Self.currentDirectory, memory, path: call[0], directory: true)
        case 263: return try remove(call.descriptor(0), memory, path: call[1], directory: call[2] & 0x200 != 0)
        case 82: return try rename(Self.currentDirectory, memory, call[0], Self.currentDirectory, call[1])
        case 264, 316: return try rename(call.descriptor(0), memory, call[1], call.descriptor(2), call[3])
        default: return nil
        }
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
    func syntheticFile(_ path: String) -> OpenFile.Kind? {
        switch path {
        case "/dev/null": return .null
        case "/dev/zero": return .zero
        case "/dev/urandom", "/dev/random": return .random
        case "/proc/meminfo":
            let kib = space.memory.size >> 10, free = space.availableBytes >> 10
            return .memory(Array("MemTotal:       \(kib) kB\nMemFree:        \(free) kB\nMemAvailable:   \(free) kB\n".utf8))
        case "/sys/devices/system/cpu/online", "/sys/devices/system/cpu/possible": return .memory(Array("0\n".utf8))
        case "/proc/self/maps": return .memory(Array(memoryMaps().utf8))
        default: return nil
        }
    }

    /// `/proc/self/maps` from the guest's page tables: runs of user pages with the same
    /// permissions (what the guest can touch; host-only pages are left out).
    func memoryMaps() -> String {
        var lines: [String] = []
        var run: (start: UInt64, end: UInt64, bits: String)?
        func flush() {
            guard let current = run else { return }
            let name = current.start >= imageRange.lowerBound && current.end <= imageRange.upperBound ? programPath
                : current.end == GuestLayout.stackTop ? "[stack]"
                : current.start == GuestLayout.syscallStubPage ? "[kvmsandbox syscall stub]"
                : current.start == GuestLayout.mailboxPage ? "[kvmsandbox mailbox and doorbell]" : ""
            lines.append("\(String(current.start, radix: 16))-\(String(current.end, radix: 16)) \(current.bits) 00000000 00:00 0"
                         + (name.isEmpty ? "" : "          \(name)"))
        }
        space.tables.forEachLeaf(from: 0, to: X86PageTables.userAddressLimit, memory: space.memory) { page, entry in
            guard entry & X86PageTables.user != 0 else { return }
            let bits = "r" + (entry & X86PageTables.writable != 0 ? "w" : "-") + (entry & X86PageTables.noExecute == 0 ? "x" : "-") + "p"
            if let current = run, current.end == page, current.bits == bits {
                run?.end = page + PageSize.bytes
            } else {
                flush()
                run = (page, page + PageSize.bytes, bits)
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
        if let kind = syntheticFile(path) {
            file = OpenFile(kind: kind, statusFlags: keep, path: path)
        } else if state.memoryFiles.covers(path) {
            switch openInMemory(path, flags: flags) {
            case .failure(let error): return Self.fail(error)
            case .success(let kind): file = OpenFile(kind: kind, statusFlags: keep, path: path)
            }
        } else if fileSystem.locate(path) == nil {
            guard isAncestorOfAMount(path) else { return Self.fail(.noSuchFileOrDirectory) }
            guard flags & O_ACCMODE == O_RDONLY else { return Self.fail(.isDirectory) }
            file = OpenFile(kind: .directory(entries: syntheticDirectory(path), host: nil), statusFlags: keep, path: path)
        } else {
            // O_PATH and O_TMPFILE are not offered; the rest goes to openat2 beneath the grant.
            guard flags & 0o10000000 == 0, flags & 0o20000000 == 0 else { return Self.fail(.invalidArgument) }
            let hostFlags = flags & (O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_DIRECTORY | O_NOFOLLOW | O_APPEND)
            // O_NONBLOCK: opening a FIFO or a device must not block the vCPU thread; only regular
            // files and directories are offered (a FIFO, socket or device in a grant is EACCES).
            switch fileSystem.open(path, flags: hostFlags | O_NONBLOCK, mode: UInt32(truncatingIfNeeded: mode & ~state.umask)) {
            case .failure(let error): return Self.fail(error)
            case .success(let fd):
                let host = HostFile(fd: fd)
                var status = stat()
                guard fstat(fd, &status) == 0 else { return Self.fail(Errno.current) }
                let kind = status.st_mode & S_IFMT
                guard kind == S_IFREG || kind == S_IFDIR else { return Self.fail(.permissionDenied) }
                if status.st_mode & S_IFMT == S_IFDIR {
                    guard let entries = Self.readDirectory(fd) else { return Self.fail(.noMemory) }
                    file = OpenFile(kind: .directory(entries: entries, host: host), statusFlags: keep, path: path)
                } else {
                    file = OpenFile(kind: .host(host), statusFlags: keep, path: path)
                }
            }
        }
        guard let fd = state.files.install(file, closeOnExec: closeOnExec) else { return Self.fail(.tooManyOpenFiles) }
        return .value(Int64(fd))
    }

    /// The most bytes of directory entries kept per open directory.
    static let directoryLimit = 16 << 20

    /// All entries of a host directory, in `getdents64` records (nil past `directoryLimit`).
    static func readDirectory(_ fd: Int32) -> [UInt8]? {
        var records: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { ckvm_getdents64(fd, $0.baseAddress!, UInt($0.count)) }
            if n <= 0 { return records }
            records += buffer[0..<n]
            if records.count > directoryLimit { return nil }
        }
    }

    /// Whether a path is a directory only because grants or in-memory trees lie beneath it.
    func isAncestorOfAMount(_ path: String) -> Bool {
        let prefix = path == "/" ? "/" : path + "/"
        return fileSystem.isAncestorOfAMount(path) || state.memoryFiles.mounts.contains { $0.hasPrefix(prefix) }
    }

    /// A directory that exists only because grants lie beneath it: `.`, `..` and the next
    /// component of each such grant.
    func syntheticDirectory(_ path: String) -> [UInt8] {
        let prefix = path == "/" ? "/" : path + "/"
        var names: [String] = []
        for mount in fileSystem.mounts.map(\.guestPath) + state.memoryFiles.mounts where mount.hasPrefix(prefix) {
            let next = String(mount.dropFirst(prefix.count).split(separator: "/").first ?? "")
            if !next.isEmpty && !names.contains(next) { names.append(next) }
        }
        return Self.directoryRecords(names.map { ($0, true) })
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

    // MARK: read and write

    func read(fd: Int64, _ memory: GuestMemoryView, into address: UInt64, count: UInt64, at position: UInt64?) throws -> HostCallEffect {
        guard let file = state.files[fd], file.readable else { return Self.fail(.badFileDescriptor) }
        let count = Int(min(count, UInt64(Self.transferLimit)))
        switch file.kind {
        case .host, .memoryFile: break
        default: if position != nil { return Self.fail(.illegalSeek) }
        }
        var bytes: [UInt8]
        switch file.kind {
        case .standardInput:
            switch readInput(count) {
            case .success(let data): bytes = data
            case .failure(let error): return Self.fail(error)
            }
        case .output: return Self.fail(.badFileDescriptor)
        case .host(let host):
            bytes = [UInt8](repeating: 0, count: count)
            let offset = position ?? file.offset
            let n = bytes.withUnsafeMutableBytes { count == 0 ? 0 : pread(host.fd, $0.baseAddress!, count, off_t(truncatingIfNeeded: offset)) }
            guard n >= 0 else { return Self.fail(Errno.current) }
            bytes.removeSubrange(n...)
        case .directory: return Self.fail(.isDirectory)
        case .memory(let contents):
            let start = Int(min(file.offset, UInt64(contents.count)))
            bytes = Array(contents[start..<min(contents.count, start + count)])
        case .memoryFile(let path):
            let contents = state.memoryFiles.contents(path) ?? []
            let start = Int(min(position ?? file.offset, UInt64(contents.count)))
            bytes = Array(contents[start..<min(contents.count, start + count)])
        case .null: bytes = []
        case .zero: bytes = [UInt8](repeating: 0, count: count)
        case .random:
            bytes = [UInt8](repeating: 0, count: count)
            let n = bytes.withUnsafeMutableBytes { count == 0 ? 0 : ckvm_getrandom($0.baseAddress!, UInt(count)) }
            bytes.removeSubrange(max(0, n)...)
        }
        try memory.write(bytes, to: address)
        if position == nil { state.files.update(fd) { $0.offset += UInt64(bytes.count) } }
        return .value(Int64(bytes.count))
    }

    /// Reads up to `count` bytes of standard input; a host descriptor is waited on in slices so
    /// the deadline still holds.
    func readInput(_ count: Int) -> Result<[UInt8], Errno> {
        switch input {
        case .empty: return .success([])
        case .bytes(let data):
            let start = min(state.inputOffset, data.count)
            let chunk = Array(data[start..<min(data.count, start + count)])
            state.inputOffset = start + chunk.count
            return .success(chunk)
        case .fileDescriptor(let fd):
            while true {
                if interrupter?.isInterrupted ?? false { return .failure(.interrupted) }
                var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, OutputWriter.pollSlice)
                if ready < 0 && errno != EINTR { return .failure(Errno.current) }
                if ready <= 0 { continue }
                var bytes = [UInt8](repeating: 0, count: count)
                let n = bytes.withUnsafeMutableBytes { count == 0 ? 0 : Glibc.read(fd, $0.baseAddress!, count) }
                if n < 0 {
                    if errno == EINTR || errno == EAGAIN { continue }
                    return .failure(Errno.current)
                }
                bytes.removeSubrange(n...)
                return .success(bytes)
            }
        }
    }

    func write(fd: Int64, _ memory: GuestMemoryView, from address: UInt64, count: UInt64, at position: UInt64?) throws -> HostCallEffect {
        guard let file = state.files[fd], file.writable else { return Self.fail(.badFileDescriptor) }
        switch file.kind {
        case .output(let stream):
            if position != nil { return Self.fail(.illegalSeek) }
            return .value(try builtins.writeOutput(stream: stream, memory, address: address, count: count))
        case .host(let host):
            let count = Int(min(count, UInt64(Self.transferLimit)))
            let bytes = try memory.read(address, count: count)
            var offset = position ?? file.offset
            if position == nil, file.statusFlags & O_APPEND != 0 {
                var status = stat()
                if fstat(host.fd, &status) == 0 { offset = UInt64(max(0, status.st_size)) }
            }
            let n = bytes.withUnsafeBytes { count == 0 ? 0 : pwrite(host.fd, $0.baseAddress!, count, off_t(truncatingIfNeeded: offset)) }
            guard n >= 0 else { return Self.fail(Errno.current) }
            if position == nil { state.files.update(fd) { $0.offset = offset + UInt64(n) } }
            return .value(Int64(n))
        case .memoryFile(let path):
            let bytes = try memory.read(address, count: Int(min(count, UInt64(Self.transferLimit))))
            var offset = position ?? file.offset
            if position == nil, file.statusFlags & O_APPEND != 0 { offset = UInt64(state.memoryFiles.contents(path)?.count ?? 0) }
            switch state.memoryFiles.write(path, bytes, at: offset) {
            case .failure(let error): return Self.fail(error)
            case .success(let n):
                if position == nil { state.files.update(fd) { $0.offset = offset + UInt64(n) } }
                return .value(Int64(n))
            }
        case .null, .zero, .random: _ = try memory.read(address, count: Int(min(count, UInt64(Self.transferLimit)))); return .value(Int64(min(count, UInt64(Self.transferLimit))))
        case .standardInput, .directory, .memory: return Self.fail(.badFileDescriptor)
        }
    }

    /// readv/writev: each vector in turn, stopping at the first short transfer.
    func vector(_ isWrite: Bool, fd: Int64, _ memory: GuestMemoryView, _ table: UInt64, count: UInt64) throws -> HostCallEffect {
        guard count <= BuiltinHostCalls.maximumIOVectors else { return Self.fail(.invalidArgument) }
        let entries = try memory.read(table, count: Int(count) * 16)
        var total: Int64 = 0
        for index in 0..<Int(count) {
            let base = UInt64(littleEndianBytes: entries[index * 16..<index * 16 + 8])
            let length = UInt64(littleEndianBytes: entries[index * 16 + 8..<index * 16 + 16])
            guard length > 0 else { continue }
            let effect = isWrite ? try write(fd: fd, memory, from: base, count: length, at: nil)
                                 : try read(fd: fd, memory, into: base, count: length, at: nil)
            guard case .value(let moved) = effect else { return effect }
            if moved < 0 { return total > 0 ? .value(total) : effect }
            total += moved
            if UInt64(moved) < length { break }
        }
        return .value(total)
    }

    func seek(fd: Int64, offset: Int64, whence: UInt64) -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        let size: Int64
        switch file.kind {
        case .host(let host):
            var status = stat()
            guard fstat(host.fd, &status) == 0 else { return Self.fail(Errno.current) }
            size = Int64(status.st_size)
        case .memory(let contents): size = Int64(contents.count)
        case .memoryFile(let path): size = Int64(state.memoryFiles.contents(path)?.count ?? 0)
        case .directory(let entries, _): size = Int64(entries.count)
        case .null, .zero, .random: return .value(0)
        case .standardInput, .output: return Self.fail(.illegalSeek)
        }
        let base: Int64
        switch whence {
        case 0: base = 0
        case 1: base = Int64(bitPattern: file.offset)
        case 2: base = size
        default: return Self.fail(.invalidArgument)
        }
        let (target, overflow) = base.addingReportingOverflow(offset)
        guard !overflow, target >= 0 else { return Self.fail(.invalidArgument) }
        state.files.update(fd) { $0.offset = UInt64(target) }
        return .value(target)
    }

    // MARK: metadata

    func statDescriptor(_ fd: Int64, _ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        var status = stat()
        switch file.kind {
        case .host(let host), .directory(_, .some(let host)):
            guard fstat(host.fd, &status) == 0 else { return Self.fail(Errno.current) }
        case .directory(_, nil): status.st_mode = S_IFDIR | 0o555; status.st_nlink = 2
        case .memory(let contents): status.st_mode = S_IFREG | 0o444; status.st_size = Int(contents.count)
        case .memoryFile(let path): status = state.memoryFiles.status(path) ?? stat()
        case .null, .zero, .random: status.st_mode = S_IFCHR | 0o666
        case .standardInput, .output:
            status.st_mode = S_IFIFO | 0o600  // a pipe: stdio then buffers fully, as for a redirected stream
        }
        status.st_blksize = 4096
        try store(status, memory, at: address)
        return .value(0)
    }

    func statPath(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, into out: UInt64,
                  follow: Bool, emptyPath: Bool) throws -> HostCallEffect {
        let raw = try memory.readCString(address, maxLength: 4095)
        if raw.isEmpty && emptyPath { return try statDescriptor(dirfd, memory, into: out) }
        let path: String
        switch try guestPath(dirfd, memory, address) {
        case .failure(let error): return Self.fail(error)
        case .success(let value): path = value
        }
        var status = stat()
        if let kind = syntheticFile(path) {
            if case .memory(let contents) = kind { status.st_mode = S_IFREG | 0o444; status.st_size = contents.count }
            else { status.st_mode = S_IFCHR | 0o666 }
        } else if state.memoryFiles.covers(path) {
            guard let found = state.memoryFiles.status(path) else { return Self.fail(.noSuchFileOrDirectory) }
            status = found
        } else if fileSystem.locate(path) == nil {
            guard isAncestorOfAMount(path) else { return Self.fail(.noSuchFileOrDirectory) }
            status.st_mode = S_IFDIR | 0o555
            status.st_nlink = 2
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
        try store(status, memory, at: out)
        return .value(0)
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
        switch fileSystem.open(path, flags: 0o10000000, mode: 0) {
        case .failure(let error): return Self.fail(error)
        case .success(let fd):
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
        guard case .directory(let entries, _) = file.kind else { return Self.fail(.notDirectory) }
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

    // MARK: descriptors

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
