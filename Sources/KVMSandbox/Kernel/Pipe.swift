#if canImport(Glibc)
import Glibc
#endif

/// One pipe's buffer, shared by every process that holds one of its ends (a shell pipeline's
/// stages run in parallel on their own host threads): bytes written and not yet read, and how
/// many processes hold its read and write ends. Blocking reads and writes wait on its
/// condition variable, woken by the other side's write, read or close.
///
/// (@unchecked: every field is read and written with `lock` held.)
final class Pipe: @unchecked Sendable, Codable {
    /// Linux's default pipe capacity.
    static let capacity = 65_536

    private let lock = ConditionLock()
    private var bytes: [UInt8]
    private var start = 0
    /// Processes holding a read end and a write end (`LinuxPersonality.syncPipeEnds`).
    private var readers = 0, writers = 0

    init(bytes: [UInt8] = []) { self.bytes = bytes }

    /// A pipe with this one's bytes and no ends (a snapshot's copy).
    func copy() -> Pipe { lock.withLock { Pipe(bytes: Array(bytes[start...])) } }

    /// Bytes buffered.
    var count: Int { lock.withLock { bytes.count - start } }

    /// Whether any process holds the read end (`reader`) or the write end.
    func isOpen(reader: Bool) -> Bool { lock.withLock { reader ? readers > 0 : writers > 0 } }

    /// A process took (+1) or dropped (-1) its hold of an end; waiters see the change.
    func adjust(reader: Bool, by delta: Int) {
        lock.withLock {
            if reader { readers = max(0, readers + delta) } else { writers = max(0, writers + delta) }
            lock.broadcast()
        }
    }

    /// What a read or a write found.
    enum Transfer {
        /// Bytes read, or the count written.
        case read([UInt8]), wrote(Int)
        /// Nothing to read and no writer: end of file.
        case endOfFile
        /// No reader: EPIPE (and SIGPIPE).
        case broken
        /// It would have to wait.
        case wouldBlock
    }

    /// Takes up to `count` bytes, or says why none can be taken now.
    func read(count: Int) -> Transfer {
        lock.withLock {
            let available = bytes.count - start
            if available > 0 {
                let taken = min(count, available)
                let result = Array(bytes[start..<start + taken])
                start += taken
                if start == bytes.count { bytes.removeAll(keepingCapacity: true); start = 0 }
                else if start > Self.capacity { bytes.removeFirst(start); start = 0 }
                lock.broadcast()
                return .read(result)
            }
            return writers == 0 ? .endOfFile : .wouldBlock
        }
    }

    /// Appends as much of `data` as fits (all of it when it is at most `PIPE_BUF` and fits).
    func write(_ data: ArraySlice<UInt8>) -> Transfer {
        lock.withLock {
            if readers == 0 { return .broken }
            let room = Self.capacity - (bytes.count - start)
            // Writes of at most PIPE_BUF (4096) bytes are atomic: all or wait.
            if room <= 0 || (data.count <= 4096 && room < data.count) { return .wouldBlock }
            let written = min(room, data.count)
            bytes += data.prefix(written)
            lock.broadcast()
            return .wrote(written)
        }
    }

    /// Whether a read would not block (data, or no writer) and whether a write would not
    /// (room, or no reader), and whether the other side is gone.
    func readiness() -> (readable: Bool, writable: Bool, noReaders: Bool, noWriters: Bool) {
        lock.withLock {
            let buffered = bytes.count - start
            return (buffered > 0, buffered < Self.capacity, readers == 0, writers == 0)
        }
    }

    /// Waits until another thread changes the pipe or `milliseconds` pass (spurious returns
    /// are fine: callers look again).
    func waitForChange(milliseconds: Int) {
        lock.withLock { lock.wait(milliseconds: milliseconds) }
    }

    // Snapshot files store a pipe's bytes; its ends are counted again when a state is installed.
    private enum CodingKeys: String, CodingKey { case bytes }
    convenience init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(bytes: try container.decode([UInt8].self, forKey: .bytes))
    }
    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(lock.withLock { Array(bytes[start...]) }, forKey: .bytes)
    }
}
