import Synchronization

/// What the guest wrote to streams configured as `.capture`: one per run, shared by every
/// process of it (a forked child's output lands where its parent's does, as with a pipe), and
/// bounded as a whole by the output limit however many processes write.
final class CapturedOutput: Sendable {
    private let streams = Mutex<[Int32: [UInt8]]>([:])

    /// Appends as much of `chunk` to stream `fd` as keeps the total within `limit`; returns the
    /// number of bytes taken.
    func append(_ chunk: UnsafeRawBufferPointer, to fd: Int32, limit: UInt64) -> Int {
        streams.withLock { streams in
            let total = streams.values.reduce(0) { $0 + $1.count }
            let room = limit > UInt64(total) ? Int(min(limit - UInt64(total), UInt64(Int.max))) : 0
            let taken = min(room, chunk.count)
            streams[fd, default: []].append(contentsOf: chunk.prefix(taken))
            return taken
        }
    }

    /// The bytes written to `fd` so far.
    func bytes(fd: Int32) -> [UInt8] { streams.withLock { $0[fd] ?? [] } }

    /// Forgets everything captured.
    func clear() { streams.withLock { $0 = [:] } }
}
