import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Pipes: a `Pipe` each (64 KiB), shared with the processes this one forks. A read of an empty
/// pipe whose write end is open somewhere (or a write to a full one) waits as Linux would: on
/// the pipe, in slices, until another process changes it or the run's deadline passes (then
/// `EINTR`), unless the end is `O_NONBLOCK` (`EAGAIN`). With several threads the caller blocks
/// and the others run.
extension LinuxPersonality {
    /// Linux's default pipe capacity.
    static let pipeCapacity = Pipe.capacity

    /// Which ends of a pipe this process holds (what it has counted in the `Pipe`).
    struct PipeHold: Codable, Equatable {
        var reader = false, writer = false
    }

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
        state.pipes[id] = Pipe()
        state.nextPipe += 1
        syncPipeEnds()
        return .value(0)
    }

    /// Tells each pipe which of its ends this process now holds (after a close, a `dup2` over
    /// a pipe end, an exec's close-on-exec, the process's end), and forgets pipes it no longer
    /// holds. Readers and writers elsewhere see end of file and broken pipes from the counts.
    func syncPipeEnds() {
        guard !state.pipes.isEmpty else { return }
        var held: [Int: PipeHold] = [:]
        state.files.forEachDescription { file in
            if case .pipe(let id, let writeEnd) = file.kind {
                if writeEnd { held[id, default: PipeHold()].writer = true } else { held[id, default: PipeHold()].reader = true }
            }
        }
        var changed = false
        for (id, pipe) in state.pipes {
            let before = state.pipeHolds[id] ?? PipeHold(), now = held[id] ?? PipeHold()
            guard before != now else { continue }
            changed = true
            if before.reader != now.reader { pipe.adjust(reader: true, by: now.reader ? 1 : -1) }
            if before.writer != now.writer { pipe.adjust(reader: false, by: now.writer ? 1 : -1) }
            if now == PipeHold() {
                state.pipes[id] = nil
                state.pipeHolds[id] = nil
            } else {
                state.pipeHolds[id] = now
            }
        }
        if changed { wakeReaders() }  // readers see end of file, writers a broken pipe
    }

    /// Gives up every pipe end (the process is gone, or its state is being replaced).
    func releasePipes() {
        for (id, hold) in state.pipeHolds {
            guard let pipe = state.pipes[id] else { continue }
            if hold.reader { pipe.adjust(reader: true, by: -1) }
            if hold.writer { pipe.adjust(reader: false, by: -1) }
        }
        state.pipeHolds = [:]
        state.pipes = [:]
    }

    /// close(2), dropping a pipe's buffer once neither end is open.
    func closeDescriptor(_ fd: Int64) -> HostCallEffect {
        let kind = state.files[fd]?.kind
        guard state.files.close(fd) else { return Self.fail(.badFileDescriptor) }
        for id in state.epolls.keys { state.epolls[id]?[Int32(truncatingIfNeeded: fd)] = nil }
        switch kind {
        case .pipe:
            syncPipeEnds()
        case .epoll(let id):
            if !state.files.refersTo({ if case .epoll(id) = $0 { return true } else { return false } }) { state.epolls[id] = nil }
        case .eventCounter(let id):
            if !state.files.refersTo({ if case .eventCounter(id) = $0 { return true } else { return false } }) { state.eventCounters[id] = nil }
        case .connection:
            wakeReaders()  // a thread waiting on the listening socket may now be done (socket mode's ready point)
        case .memoryFile(let path) where path.contains("\u{0}") && processes == nil:
            // The last descriptor of an unlinked in-memory file, in a process that never forked.
            if !state.files.refersTo({ if case .memoryFile(path) = $0 { return true } else { return false } }) {
                _ = state.memoryFiles.remove(path, directory: false)
            }
        default: break
        }
        return .value(0)
    }

    func readPipe(_ id: Int, count: Int, nonblocking: Bool) -> Result<[UInt8], Errno> {
        guard let pipe = state.pipes[id] else { return .success([]) }
        while true {
            switch pipe.read(count: count) {
            case .read(let data):
                wakeReaders()  // room for writers
                return .success(data)
            case .endOfFile: return .success([])
            default: break
            }
            if nonblocking { return .failure(.resourceTemporarilyUnavailable) }
            if mustNotWait { return .failure(Self.restart) }  // another thread may write
            if interrupter?.isInterrupted ?? false { return .failure(.interrupted) }
            pipe.waitForChange(milliseconds: Int(OutputWriter.pollSlice))
        }
    }

    func writePipe(_ id: Int, _ bytes: [UInt8], nonblocking: Bool) -> Result<Int, Errno> {
        guard let pipe = state.pipes[id] else { return .failure(.brokenPipe) }
        while true {
            switch pipe.write(bytes[...]) {
            case .wrote(let written):
                wakeReaders()
                return .success(written)
            case .broken: return .failure(.brokenPipe)
            default: break
            }
            if nonblocking { return .failure(.resourceTemporarilyUnavailable) }
            if mustNotWait { return .failure(Self.restart) }  // another thread may read
            if interrupter?.isInterrupted ?? false { return .failure(.interrupted) }
            pipe.waitForChange(milliseconds: Int(OutputWriter.pollSlice))
        }
    }
}

extension LinuxPersonality.State {
    /// This state with pipes and in-memory files of its own: copies of their bytes, with the
    /// pipe ends it holds counted. What a snapshot keeps and what a fork of it or a reset
    /// installs, so that VMs share a pipe or a tmpfs only when one process forked the other.
    func detached() -> Self {
        var copy = self
        copy.memoryFiles = memoryFiles.detached()
        copy.files.detachOffsets()
        for (id, pipe) in pipes {
            let own = pipe.copy()
            if pipeHolds[id]?.reader == true { own.adjust(reader: true, by: 1) }
            if pipeHolds[id]?.writer == true { own.adjust(reader: false, by: 1) }
            copy.pipes[id] = own
        }
        return copy
    }
}
