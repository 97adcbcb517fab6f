import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Memory that several processes of one sandbox map at once (`mmap(MAP_SHARED)` of anonymous
/// memory or of an in-memory file, inherited across `fork`): a host memfd that each process's
/// guest memory maps over some of its own guest-physical pages (`GuestMemory.overlay`), so a
/// store by one VM is seen by the others with no copy and no exit. Futex waits on its words
/// are queued here (`futexes`), where a wake from any process finds them.
///
/// Owns the memfd, closed when the last process holding a mapping of it (and the file
/// registry, for a file's object) lets it go.
final class SharedMemoryObject: Sendable {
    /// The memfd. Its size only grows (`ensureSize`).
    let fd: FileDescriptor
    private let size: HostMutex<UInt64>
    /// Futex waiters on words of this memory, from every process that maps it.
    let futexes = SharedFutexQueue()

    /// A zero-filled object of `size` bytes (a multiple of the page size).
    init(size: UInt64) throws(Errno) {
        let raw = chost_memfd_create("kvmsandbox-shared")
        guard raw >= 0 else { throw Errno.current }
        fd = FileDescriptor(rawValue: raw)
        self.size = HostMutex(0)
        guard ensureSize(size) else {
            try? fd.close()
            throw Errno.noMemory
        }
    }

    deinit { try? fd.close() }

    /// Grows the memfd to at least `bytes` (never shrinks: a process may still map the end).
    func ensureSize(_ bytes: UInt64) -> Bool {
        size.withLock { current in
            guard bytes > current else { return true }
            guard bytes <= GuestMemory.maximumSize, ftruncate(fd.rawValue, off_t(bytes)) == 0 else { return false }
            current = bytes
            return true
        }
    }

    /// Writes `bytes` at `offset` (a file's contents when it is first mapped).
    func write(_ bytes: [UInt8], at offset: UInt64) -> Bool {
        guard !bytes.isEmpty else { return true }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}

/// Futex waiters on shared memory, across processes: each wait is a ticket that a wake marks
/// woken (up to the count asked, matching offset and bitset, oldest first, as Linux) and whose
/// process is told through its `Doorbell`. The waiting thread re-runs its call when its process
/// wakes and collects the ticket.
final class SharedFutexQueue: Sendable {
    private struct Waiter {
        let ticket: UInt64
        let offset: UInt64
        let bitset: UInt32
        var woken: Bool
        let doorbell: Doorbell
    }
    private let state = HostMutex<(next: UInt64, waiters: [Waiter])>((1, []))

    /// At most this many waiters at once on one object (a guest thread waits at most once; the
    /// threads and processes of a sandbox are bounded well below it).
    static let maximumWaiters = 4096

    /// Queues a wait on the word at `offset`; nil when the queue is full (EAGAIN for the guest).
    func enqueue(offset: UInt64, bitset: UInt32, doorbell: Doorbell) -> UInt64? {
        state.withLock { state in
            guard state.waiters.count < Self.maximumWaiters else { return nil }
            let ticket = state.next
            state.next &+= 1
            state.waiters.append(Waiter(ticket: ticket, offset: offset, bitset: bitset, woken: false, doorbell: doorbell))
            return ticket
        }
    }

    /// Wakes up to `count` waiters on `offset` whose bitset shares a bit with `bitset`: how many.
    func wake(offset: UInt64, count: Int, bitset: UInt32) -> Int {
        let doorbells: [Doorbell] = state.withLock { state in
            var rung: [Doorbell] = []
            for index in state.waiters.indices where rung.count < count {
                let waiter = state.waiters[index]
                guard !waiter.woken, waiter.offset == offset, waiter.bitset & bitset != 0 else { continue }
                state.waiters[index].woken = true
                rung.append(waiter.doorbell)
            }
            return rung
        }
        for doorbell in doorbells { doorbell.ring() }
        return doorbells.count
    }

    /// Whether `ticket` was woken (then it is gone), is still waiting (false), or is unknown (nil).
    func collect(_ ticket: UInt64) -> Bool? {
        state.withLock { state in
            guard let index = state.waiters.firstIndex(where: { $0.ticket == ticket }) else { return nil }
            guard state.waiters[index].woken else { return false }
            state.waiters.remove(at: index)
            return true
        }
    }

    /// Withdraws `ticket` (a timeout, an interrupted wait, a process that ended).
    func cancel(_ ticket: UInt64) {
        state.withLock { state in state.waiters.removeAll { $0.ticket == ticket } }
    }

    /// Waiters queued now.
    var count: Int { state.withLock { $0.waiters.count } }
}

/// A wake-up channel a process's idle wait watches: rung by another process (or host thread)
/// that has something for it, such as a futex wake on shared memory. Owns a non-blocking
/// eventfd, closed on deinit.
final class Doorbell: Sendable {
    /// The eventfd, polled by the idle wait.
    let fd: Int32

    /// A new doorbell, or nil when the host has no descriptors to spare.
    init?() {
        let raw = chost_eventfd()
        guard raw >= 0 else { return nil }
        fd = raw
    }

    deinit { close(fd) }

    /// Tells the waiting process to look again (never blocks: a full counter is rung already).
    func ring() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Forgets the rings so far (after the waiting process woke).
    func drain() {
        var value: UInt64 = 0
        _ = Glibc.read(fd, &value, 8)
    }
}
