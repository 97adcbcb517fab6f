import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Reading and writing: files, standard streams, in-memory files and devices, and seeks.
extension LinuxPersonality {
    func read(fd: Int64, _ memory: GuestMemoryView, into address: UInt64, count: UInt64, at position: UInt64?) throws -> HostCallEffect {
        guard let file = state.files[fd], file.readable else { return Self.fail(.badFileDescriptor) }
        let count = Int(min(count, UInt64(Self.transferLimit)))
        switch file.kind {
        case .host, .memoryFile: break
        default: if position != nil { return Self.fail(.illegalSeek) }
        }
        var bytes: [UInt8]
        switch file.kind {
        case .connection: return try receive(fd, memory, vectors: [(address, UInt64(count))], flags: 0, address: 0, length: 0)
        case .socket: return Self.fail(.socketNotConnected)
        case .standardInput:
            switch readInput(count) {
            case .success(let data): bytes = data
            case .failure(let error): return Self.fail(error)
            }
        case .output: return Self.fail(.badFileDescriptor)
        case .host(let host):
            // Straight into the guest's buffer (checked writable first, as a bad one is EFAULT).
            let n = count == 0 ? 0 : try memory.space.readFile(host.fd, offset: position ?? file.offset, into: address,
                                                                count: UInt64(count), access: .write)
            guard n >= 0 else { return Self.fail(Errno(rawValue: Int32(-n))) }
            if position == nil { state.files.update(fd) { $0.offset += UInt64(n) } }
            return .value(Int64(n))
        case .directory: return Self.fail(.isDirectory)
        case .memory(let contents):
            let start = Int(min(file.offset, UInt64(contents.count)))
            bytes = Array(contents[start..<min(contents.count, start + count)])
        case .pipe(let id, let writeEnd):
            guard !writeEnd else { return Self.fail(.badFileDescriptor) }
            switch readPipe(id, count: count, nonblocking: file.statusFlags & O_NONBLOCK != 0) {
            case .success(let data): bytes = data
            case .failure(let error): return Self.fail(error)
            }
        case .memoryFile(let path):
            let contents = state.memoryFiles.contents(path) ?? []
            let start = Int(min(position ?? file.offset, UInt64(contents.count)))
            bytes = Array(contents[start..<min(contents.count, start + count)])
        case .eventCounter(let id):
            switch readEventCounter(id, count: UInt64(count), nonblocking: file.statusFlags & O_NONBLOCK != 0) {
            case .success(let data): bytes = data
            case .failure(let error): return Self.fail(error)
            }
        case .epoll: return Self.fail(.invalidArgument)
        case .null: bytes = []
        case .zero: bytes = [UInt8](repeating: 0, count: count)
        case .random:
            bytes = [UInt8](repeating: 0, count: count)
            let n = bytes.withUnsafeMutableBytes { count == 0 ? 0 : chost_getrandom($0.baseAddress!, UInt(count)) }
            bytes.removeSubrange(max(0, n)...)
        }
        try memory.write(bytes, to: address)
        if position == nil { state.files.update(fd) { $0.offset += UInt64(bytes.count) } }
        return .value(Int64(bytes.count))
    }

    /// Whether `call` reads the run's standard input (read, readv, pread64 on a
    /// descriptor for it): where an unmodified program is ready for a snapshot.
    func readsStandardInput(_ call: HostCall) -> Bool {
        guard LinuxPersonality.systemCalls[call.number]?.transfer == .reads, let file = state.files[call.descriptor(0)],
              case .standardInput = file.kind else { return false }
        return true
    }

    /// Whether every byte of standard input has been read (`.empty`, or `.bytes` read to the
    /// end); a host descriptor never runs out.
    var inputExhausted: Bool {
        switch input {
        case .empty: return true
        case .bytes(let data): return state.inputOffset >= data.count
        case .fileDescriptor: return false
        }
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
                let ready = Glibc.poll(&descriptor, 1, OutputWriter.pollSlice)
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
            var count = Int(min(count, UInt64(Self.transferLimit)))
            // The disk quota: at most what is left of it, ENOSPC when nothing is (as a full disk).
            var before = stat()
            if let allowance = diskAllowance {
                guard allowance > 0 || count == 0 else { return Self.fail(.noSpace) }
                count = min(count, allowance)
                guard fstat(host.fd, &before) == 0 else { return Self.fail(Errno.current) }
            }
            defer {
                var after = stat()
                if diskQuota != nil, fstat(host.fd, &after) == 0 { chargeDisk(Int(after.st_blocks - before.st_blocks) * 512) }
            }
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
        case .pipe(let id, let writeEnd):
            guard writeEnd else { return Self.fail(.badFileDescriptor) }
            if position != nil { return Self.fail(.illegalSeek) }
            let bytes = try memory.read(address, count: Int(min(count, UInt64(Self.pipeCapacity))))
            switch writePipe(id, bytes, nonblocking: file.statusFlags & O_NONBLOCK != 0) {
            case .success(let n): return .value(Int64(n))
            case .failure(.brokenPipe):
                // No reader left: SIGPIPE as well, which ends the process unless handled or ignored.
                if case .signal(let number) = send(13, to: state.currentThread) { return .signal(number) }
                return Self.fail(.brokenPipe)
            case .failure(let error): return Self.fail(error)
            }
        case .eventCounter(let id):
            switch writeEventCounter(id, try memory.read(address, count: Int(min(count, 8)))) {
            case .success(let n): return .value(Int64(n))
            case .failure(let error): return Self.fail(error)
            }
        case .epoll: return Self.fail(.invalidArgument)
        case .connection:
            if position != nil { return Self.fail(.illegalSeek) }
            return try send(fd, memory, vectors: [(address, count)], flags: 0)
        case .socket: return Self.fail(.socketNotConnected)
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
        .value(try BuiltinHostCalls.transferVectors(memory, table: table, count: count) { base, length in
            let effect = isWrite ? try write(fd: fd, memory, from: base, count: length, at: nil)
                                 : try read(fd: fd, memory, into: base, count: length, at: nil)
            // Reads and writes only ever answer with a value.
            guard case .value(let moved) = effect else { return -Int64(HostCallErrno.EIO) }
            return moved
        })
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
        case .directory(_, .some):
            // A host directory's offsets are the file system's cookies (`d_off`): set, or asked for.
            switch whence {
            case 0 where offset >= 0: break
            case 1 where offset == 0: return .value(Int64(bitPattern: file.offset))
            default: return Self.fail(.invalidArgument)
            }
            state.files.update(fd) { $0.offset = UInt64(offset) }
            return .value(offset)
        case .directory(let entries, nil): size = Int64(entries.count)
        case .null, .zero, .random: return .value(0)
        case .standardInput, .output, .pipe, .epoll, .eventCounter, .socket, .connection: return Self.fail(.illegalSeek)
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
}
