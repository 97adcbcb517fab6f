import Atomics

/// The page of exitless host calls, shared by the guest and a host polling thread while the
/// guest runs. Mapped user read+write at `GuestLayout.mailboxPage` in every VM. Layout (little-
/// endian 64-bit words; the guest SDK's `struct ks_mailbox`):
///
/// | offset | field | written by |
/// |---|---|---|
/// | 0 | request: sequence number of the posted call | guest, last (release) |
/// | 8 | number | guest |
/// | 16-63 | six arguments | guest |
/// | 64 | response: sequence number of the answered call | host, last (release) |
/// | 72 | result | host |
/// | 128 | polling: nonzero while a host thread watches this page | host |
///
/// The guest posts a call and spins on `response` for a bounded time, then falls back to the
/// exit `KS_HC_MAILBOX_WAIT` (0xf02) with the sequence number. Every field is untrusted: the
/// host copies a request out once, then validates the copy.
///
/// (@unchecked: the page is guest memory the guest writes at any time: every access is an atomic load or store, and a request is copied out once, then validated.)
final class Mailbox: @unchecked Sendable {
    /// A request as copied out of the page (the arguments into the caller's buffer).
    struct Request: Equatable {
        let sequence: UInt64
        let number: Int
    }

    private let memory: GuestMemory
    private let base: UnsafeMutableRawPointer
    /// Whether the host wrote the page since the last `takeWritten()` (KVM's dirty log does not
    /// see host writes; a fork's reset must restore the page then).
    private let written = ManagedAtomic<Bool>(false)

    /// The mailbox in guest-physical page `physical` of `memory`.
    init(memory: GuestMemory, physical: UInt64) {
        self.memory = memory
        base = memory.pagePointer(physical)
    }

    private func word(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    /// The sequence number of the latest posted request.
    var postedSequence: UInt64 { word(0).load(ordering: .acquiring) }

    /// Copies the posted request out of the page, once: its six arguments into `arguments`
    /// (which must hold six; reused across calls so that serving allocates nothing).
    func copyRequest(arguments: inout [UInt64]) -> Request {
        let sequence = word(0).load(ordering: .acquiring)
        let number = Int(truncatingIfNeeded: Int64(bitPattern: word(8).load(ordering: .relaxed)))
        for index in 0..<6 { arguments[index] = word(16 + 8 * index).load(ordering: .relaxed) }
        return Request(sequence: sequence, number: number)
    }

    /// Publishes `result` as the answer to request `sequence`.
    func answer(sequence: UInt64, result: Int64) {
        written.store(true, ordering: .relaxed)
        word(72).store(UInt64(bitPattern: result), ordering: .relaxed)
        word(64).store(sequence, ordering: .releasing)
    }

    /// Runs `body`, which rewrites the page (a parked VM's rewind), keeping the polling word.
    func rewriting(_ body: () -> Void) {
        let polling = word(128).load(ordering: .relaxed)
        body()
        word(128).store(polling, ordering: .releasing)
    }

    /// Whether the host wrote the page since the last call.
    func takeWritten() -> Bool { written.exchange(false, ordering: .relaxed) }

    /// Tells the guest whether a host thread is watching (so posting is worth it).
    /// Writes only when the value changes, so that a run without exitless calls leaves the page
    /// clean (nothing for a fork's reset to copy back).
    func setPolling(_ polling: Bool) {
        let value: UInt64 = polling ? 1 : 0
        guard word(128).load(ordering: .relaxed) != value else { return }
        written.store(true, ordering: .relaxed)
        word(128).store(value, ordering: .releasing)
    }
}
