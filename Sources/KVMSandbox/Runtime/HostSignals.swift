import Atomics
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Signals the host sends a running guest from any thread (`Sandbox.signalSender`): what
/// `kvmsandbox run` does with its own SIGINT, SIGTERM and SIGHUP, as `docker run` forwards them.
/// A signal is marked here and the vCPU kicked; the run loop takes it at its next stop and sends
/// it to the guest as `kill(getpid(), n)` would: the program's handler runs, an ignored signal is
/// dropped, and any other ends the run as `.signaled(n)` (SIGKILL always does).
///
/// Valid while its sandbox lives (it kicks that sandbox's vCPU).
public final class HostSignals: Sendable {
    /// Signals sent and not yet taken (bit n-1 for signal n).
    private let pending = ManagedAtomic<UInt64>(0)
    /// The thread running the guest (`pthread_self` as an integer), 0 between runs.
    private let runningThread = ManagedAtomic<UInt>(0)
    private let interrupter: VCPUInterrupter
    /// The program an `execve` replaced this one's with: signals sent here go there from then on
    /// (what `run` holds keeps reaching the process, whatever it runs now).
    private let successor = Mutex<HostSignals?>(nil)

    init(interrupter: VCPUInterrupter) { self.interrupter = interrupter }

    /// From now on signals sent here go to `next` (the image an `execve` loaded), with those
    /// not yet taken.
    func hand(to next: HostSignals) {
        successor.withLock { $0 = next }
        for number in take() { next.send(Int32(number)) }
    }

    /// Sends `signal` (1-64) to the guest; a run in progress is interrupted to take it, a sandbox
    /// that is not running takes it when it next runs. Other numbers are ignored.
    public func send(_ signal: Int32) {
        guard (1...64).contains(signal) else { return }
        if let next = successor.withLock({ $0 }) { return next.send(signal) }
        _ = pending.loadThenBitwiseOr(with: UInt64(1) << UInt64(signal - 1), ordering: .sequentiallyConsistent)
        let thread = runningThread.load(ordering: .sequentiallyConsistent)
        if thread != 0 { interrupter.interrupt(thread: pthread_t(thread)) }
    }

    /// Marks `signal` (1-64) for the guest to take at its next stop, without interrupting it
    /// (`SIGCHLD` from a child: a blocking call in progress must not fail with `EINTR` for it).
    func post(_ signal: Int32) {
        guard (1...64).contains(signal) else { return }
        _ = pending.loadThenBitwiseOr(with: UInt64(1) << UInt64(signal - 1), ordering: .sequentiallyConsistent)
    }

    /// Whether a signal waits to be taken.
    var hasPending: Bool { pending.load(ordering: .relaxed) != 0 }

    /// The signals sent so far, lowest first, and forgets them.
    func take() -> [Int] {
        let bits = pending.exchange(0, ordering: .sequentiallyConsistent)
        return (0..<64).filter { bits & (UInt64(1) << UInt64($0)) != 0 }.map { $0 + 1 }
    }

    /// The vCPU thread, for the duration of a run (0 when it ends).
    func setRunningThread(_ thread: pthread_t?) {
        runningThread.store(thread.map { UInt($0) } ?? 0, ordering: .sequentiallyConsistent)
    }
}
