import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Pipes between the guest's own descriptors: a 64 KiB buffer in the VM's state. With one
/// thread, a read of an empty pipe whose write end is open (or a write to a full one) can only
/// wait: it waits as Linux would, in slices, until the run's deadline (then `EINTR`), unless
/// the end is `O_NONBLOCK` (`EAGAIN`).
extension LinuxPersonality {
    /// Linux's default pipe capacity.
    static let pipeCapacity = 65_536

    func makePipe(_ memory: GuestMemoryView, into address: UInt64, flags: UInt64) throws -> HostCallEffect {
        let cloexec = UInt64(UInt32(bitPattern: O_CLOEXEC)), nonblock = UInt64(UInt32(bitPattern: O_NONBLOCK))
        guard flags & ~(cloexec | nonblock) == 0 else { return Self.fail(.invalidArgument) }
        let id = state.nextPipe
        let status = flags & nonblock != 0 ? O_NONBLOCK : 0
        var table = state.files
        guard let reader = table.install(OpenFile(kind: .pipe(id: id, writeEnd: false), statusFlags: O_RDONLY | status, path: "pipe:[\(id)]"),
                                         closeOnExec: flags & cloexec != 0),
              let writer = table.install(OpenFile(kind: .pipe(id: id, writeEnd: true), statusFlags: O_WRONLY | status, path: "pipe:[\(id)]"),
                                         closeOnExec: flags & cloexec != 0) else { return Self.fail(.tooManyOpenFiles) }
        try memory.write(UInt32(reader).littleEndianBytes + UInt32(writer).littleEndianBytes, to: address)
        state.files = table
        state.pipes[id] = []
        state.nextPipe += 1
        return .value(0)
    }

    /// close(2), dropping a pipe's buffer once neither end is open.
    func closeDescriptor(_ fd: Int64) -> HostCallEffect {
        let kind = state.files[fd]?.kind
        guard state.files.close(fd) else { return Self.fail(.badFileDescriptor) }
        for id in state.epolls.keys { state.epolls[id]?[Int32(truncatingIfNeeded: fd)] = nil }
        switch kind {
        case .pipe(let id, _):
            if !state.files.hasPipeEnd(id, writeEnd: false), !state.files.hasPipeEnd(id, writeEnd: true) { state.pipes[id] = nil }
            wakeReaders()  // readers see end of file, writers a broken pipe
        case .epoll(let id):
            if !state.files.refersTo({ if case .epoll(id) = $0 { return true } else { return false } }) { state.epolls[id] = nil }
        case .eventCounter(let id):
            if !state.files.refersTo({ if case .eventCounter(id) = $0 { return true } else { return false } }) { state.eventCounters[id] = nil }
        case .connection:
            wakeReaders()  // a thread waiting on the listening socket may now be done (socket mode's ready point)
        default: break
        }
        return .value(0)
    }

    func readPipe(_ id: Int, count: Int, nonblocking: Bool) -> Result<[UInt8], Errno> {
        while true {
            let buffer = state.pipes[id] ?? []
            if !buffer.isEmpty {
                let taken = Array(buffer.prefix(count))
                state.pipes[id] = Array(buffer.dropFirst(taken.count))
                wakeReaders()  // room for writers
                return .success(taken)
            }
            if !state.files.hasPipeEnd(id, writeEnd: true) { return .success([]) }  // end of file
            if nonblocking { return .failure(.resourceTemporarilyUnavailable) }
            if state.threads.count > 1 { return .failure(Self.restart) }  // another thread may write
            if let error = waitSlice() { return .failure(error) }
        }
    }

    func writePipe(_ id: Int, _ bytes: [UInt8], nonblocking: Bool) -> Result<Int, Errno> {
        while true {
            if !state.files.hasPipeEnd(id, writeEnd: false) { return .failure(.brokenPipe) }
            let buffer = state.pipes[id] ?? []
            let room = Self.pipeCapacity - buffer.count
            if room > 0 {
                let written = min(room, bytes.count)
                state.pipes[id] = buffer + bytes.prefix(written)
                wakeReaders()
                return .success(written)
            }
            if nonblocking { return .failure(.resourceTemporarilyUnavailable) }
            if state.threads.count > 1 { return .failure(Self.restart) }  // another thread may read
            if let error = waitSlice() { return .failure(error) }
        }
    }

    /// Waits one slice for something that only the deadline can end; `EINTR` once it has.
    private func waitSlice() -> Errno? {
        if interrupter?.isInterrupted ?? false { return .interrupted }
        var pause = timespec(tv_sec: 0, tv_nsec: Int(OutputWriter.pollSlice) * 1_000_000)
        nanosleep(&pause, nil)
        return nil
    }
}
