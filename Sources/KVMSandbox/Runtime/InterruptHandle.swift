#if canImport(Glibc)
import Glibc
#endif

/// Stops a sandbox's guest from any thread, as a deadline does: the run in progress (or, when
/// none is, the next one) ends with `RunOutcome.interrupted`. A request is honoured once; a
/// `reset()` forgets one that no run took. The pools call it when the calling task is
/// cancelled.
///
/// ```swift
/// let handle = sandbox.interruptHandle
/// Task.detached { try await Task.sleep(for: .seconds(1)); handle.interrupt() }
/// let outcome = try sandbox.run()   // .interrupted(rip: ...) if still running after a second
/// ```
public final class InterruptHandle: Sendable {
    private struct State {
        var requested = false
        /// The thread running the guest and its vCPU's kick, while a run is in progress.
        var running: (thread: pthread_t, interrupter: VCPUInterrupter)?
    }

    // The vCPU's interrupter is kept only between `beginRun` and `endRun`: the sandbox (and
    // with it the vCPU's `kvm_run` page the interrupter points into) is alive for that time,
    // and a handle kept longer than its sandbox never touches the page.
    private let state = HostMutex(State())

    init() {}

    /// Asks the guest to stop: the current run ends with `.interrupted`, or the next one does
    /// at its first entry. Safe from any thread, any number of times.
    public func interrupt() {
        state.withLock { state in
            state.requested = true
            if let running = state.running { running.interrupter.interrupt(thread: running.thread) }
        }
    }

    /// Whether a stop was asked for and no run has taken it yet.
    public var isRequested: Bool { state.withLock { $0.requested } }

    /// The run loop starts on this thread: a request made before it stops the first entry.
    func beginRun(interrupter: VCPUInterrupter) {
        _ = VCPUInterrupter.signal  // the kick's handler, before any kick
        state.withLock { state in
            state.running = (pthread_self(), interrupter)
            if state.requested { interrupter.immediateExit.store(1, ordering: .sequentiallyConsistent) }
        }
    }

    /// The run loop ended: no more kicks to this thread.
    func endRun() { state.withLock { $0.running = nil } }

    /// Takes the request if there is one (the run then ends with `.interrupted`).
    func takeRequest() -> Bool {
        state.withLock { state in
            defer { state.requested = false }
            return state.requested
        }
    }

    /// Forgets a request no run took (a reset starts the VM afresh).
    func clear() { state.withLock { $0.requested = false } }
}
