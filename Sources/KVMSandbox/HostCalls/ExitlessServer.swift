import Atomics
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Serves one running sandbox's mailbox: from the poller thread while the guest spins, or from
/// the vCPU thread when the guest gives up spinning and exits (`KS_HC_MAILBOX_WAIT`). A lock
/// makes the two (and the exit path's own user calls) mutually exclusive, so each request is
/// served exactly once and handlers never run concurrently.
///
/// Embedder calls (`HostCallNumber.firstUserNumber` and up) and, from the exitless `syscall`
/// stub, Linux system calls (number with bit 62 set) travel by mailbox; the Linux layer serves
/// those that need nothing of the vCPU and answers `exitlessMustExit` for the others. The SDK
/// sends built-in calls (exit, memory, output) by exit.
///
/// The vCPU thread holds the lock while it handles an exit (`whileHeld`), so the poller never
/// serves a call while the run loop changes the guest's state (threads, signals, memory).
///
/// (@unchecked: `handlers` and `systemCalls` are set by `prepare` before it is registered with the poller and read only while registered; the rest is under `state`'s lock or atomic.)
final class ExitlessServer: @unchecked Sendable {
    let mailbox: Mailbox
    private let memory: GuestMemoryView
    /// Set by `prepare` before each run, read only while registered with the poller.
    private var handlers: [Int: HostCallHandler] = [:]
    private var systemCalls: ((HostCall) throws -> Int64?)?
    private let interrupter: VCPUInterrupter
    private let state = ServerLock(State())
    /// The last sequence served: written under the lock, read without it on the poller's fast path.
    private let lastServed = ManagedAtomic<UInt64>(0)

    /// Until when (monotonic ns) the guest is told not to post, because its posts kept going
    /// unanswered (the poller has no core: e.g. everything on one CPU).
    private let suspendedUntil = ManagedAtomic<UInt64>(0)

    private struct State {
        /// The arguments of the request being served, reused.
        var arguments = [UInt64](repeating: 0, count: 6)
        var lastResult: Int64 = 0
        /// Fallbacks among the requests since `windowStart` (a window of `window` requests).
        var windowStart: UInt64 = 0
        var windowFallbacks = 0
        var suspension: UInt64 = 1_000_000
        /// A handler failed with a non-guest error on the poller thread: the run must end.
        var failure: (number: Int, message: String)?
    }

    /// A server for a sandbox's mailbox; `prepare` it before each run.
    init(mailbox: Mailbox, memory: GuestMemoryView, interrupter: VCPUInterrupter) {
        self.mailbox = mailbox
        self.memory = memory
        self.interrupter = interrupter
    }

    /// Readies the server for a run with `handlers` and, when Linux system calls may be posted,
    /// `systemCalls` (nil answer: the call must go by exit). Call while not registered.
    func prepare(handlers: [Int: HostCallHandler], systemCalls: ((HostCall) throws -> Int64?)? = nil) {
        self.handlers = handlers
        self.systemCalls = systemCalls
        // The page may hold an old request (from an earlier run or before a snapshot): never
        // serve it again.
        let posted = mailbox.postedSequence
        lastServed.store(posted, ordering: .relaxed)
        state.withLock { state in
            state.failure = nil
            state.windowStart = posted
            state.windowFallbacks = 0
        }
    }

    /// Whether the guest posted a request not yet served (two atomic loads; no lock).
    var hasPendingRequest: Bool { mailbox.postedSequence != lastServed.load(ordering: .acquiring) }

    /// Poller thread: serves a newly posted request unless another thread is serving. Returns
    /// whether it served one.
    func pollOnce() -> Bool {
        guard mailbox.postedSequence != lastServed.load(ordering: .acquiring) else { return false }
        return state.withLockIfAvailable { state in
            let request = mailbox.copyRequest(arguments: &state.arguments)
            guard request.sequence != lastServed.load(ordering: .relaxed) else { return false }
            serve(request, &state)
            return true
        } ?? false
    }

    /// vCPU thread, at the fallback exit for request `sequence`: its result, serving it first
    /// if the poller has not.
    func waitExit(sequence: UInt64) -> Int64 {
        state.withLock { state in
            noteFallback(sequence, &state)
            if lastServed.load(ordering: .relaxed) == sequence { return state.lastResult }
            let request = mailbox.copyRequest(arguments: &state.arguments)
            guard request.sequence == sequence else { return -Int64(HostCallErrno.EINVAL) }
            serve(request, &state)
            return state.lastResult
        }
    }

    /// Requests per window, and the fallbacks in a window that suspend posting.
    static let window: UInt64 = 16, tolerableFallbacks = 4

    /// Counts a fallback; when too many of the recent requests fell back, tells the guest to stop
    /// posting for a while (doubling from 1 ms to 1 s while it keeps happening).
    private func noteFallback(_ sequence: UInt64, _ state: inout State) {
        // Only a fallback while the poller spins says it has no core; one while it slept is
        // just wake-up latency (the exit that follows wakes it).
        guard MailboxPoller.shared.isSpinning else { return }
        if sequence &- state.windowStart >= Self.window {
            if state.windowFallbacks <= Self.tolerableFallbacks { state.suspension = 1_000_000 }
            state.windowStart = sequence
            state.windowFallbacks = 0
        }
        state.windowFallbacks += 1
        guard state.windowFallbacks > Self.tolerableFallbacks else { return }
        suspendedUntil.store(monotonicNanoseconds() + state.suspension, ordering: .relaxed)
        state.suspension = min(state.suspension * 2, 1_000_000_000)
        state.windowFallbacks = 0
        mailbox.setPolling(false)
    }

    /// Whether the guest should be told to post now (the poller sets `polling` from this).
    func shouldPoll(now: UInt64) -> Bool { now >= suspendedUntil.load(ordering: .relaxed) }

    /// vCPU thread: runs an exit-path embedder call while the poller cannot serve.
    func exclusively<T>(_ body: () throws -> T) rethrows -> T {
        try state.withLock { _ in try body() }
    }

    /// vCPU thread: runs the handling of an exit with the poller kept out; calls of
    /// `exclusively` and `waitExit` inside it do not lock again.
    func whileHeld<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        try state.holding(body)
    }

    /// A parked VM between requests (its guest idle): `restorePage` puts the page back as the
    /// snapshot had it (the polling word stays), and the server forgets what it served, so the
    /// next request sees nothing of the last one's calls and is served afresh.
    func rewind(restoringPage restorePage: () -> Void) {
        state.withLock { state in
            mailbox.rewriting(restorePage)
            let posted = mailbox.postedSequence
            lastServed.store(posted, ordering: .releasing)
            state.lastResult = 0
            state.windowStart = posted
            state.windowFallbacks = 0
        }
    }

    /// The failure a poller-served handler left, if any.
    var failure: (number: Int, message: String)? { state.withLock { $0.failure } }

    /// Bit 62 of a posted number: a Linux system call from the exitless `syscall` stub.
    static let systemCallFlag = 1 << 62

    private func serve(_ request: Mailbox.Request, _ state: inout State) {
        var result: Int64
        if request.number & Self.systemCallFlag != 0 {
            // A system call: the Linux layer serves it here, or it goes back to the exit. The
            // number is untrusted like the rest (the guest can write the page).
            let call = HostCall(number: request.number & ~Self.systemCallFlag, arguments: state.arguments, memory: memory)
            do {
                result = try systemCalls?(call) ?? X86CPUState.exitlessMustExit
            } catch {
                // Served, but the guest must not go on (stale translations): no answer, so the
                // guest's fallback exit finds the failure and the run ends there.
                if state.failure == nil { state.failure = (call.number, "\(error)") }
                interrupter.immediateExit.store(1, ordering: .sequentiallyConsistent)
                state.lastResult = -Int64(HostCallErrno.EIO)
                lastServed.store(request.sequence, ordering: .releasing)
                return
            }
        } else if request.number >= HostCallNumber.firstUserNumber, let handler = handlers[request.number] {
            do {
                result = try handler(HostCall(number: request.number, arguments: state.arguments, memory: memory))
            } catch {
                if let guestResult = HostCallErrno.result(for: error) {
                    result = guestResult
                } else {
                    result = -Int64(HostCallErrno.EIO)
                    if state.failure == nil {
                        state.failure = (request.number, "\(error)")
                        // Ends the run at the guest's next exit (at the latest its fallback exit).
                        interrupter.immediateExit.store(1, ordering: .sequentiallyConsistent)
                    }
                }
            }
        } else {
            result = -Int64(HostCallErrno.ENOSYS)
        }
        state.lastResult = result
        lastServed.store(request.sequence, ordering: .releasing)
        mailbox.answer(sequence: request.sequence, result: result)
    }
}

/// A lock around a value that the owning thread may hold across a stretch of work
/// (`holding`), during which its nested `withLock` calls run without locking again; other
/// threads lock or try to. Only the vCPU thread holds it that way.
///
/// (@unchecked: `value` is only touched with `mutex` locked, by the thread that locked it or
/// that holds it through `holding`; `holder` is atomic, so another thread reading it while
/// the owner holds the lock sees someone else's id and waits for the mutex.)
final class ServerLock<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// The thread holding the lock through `holding` (`pthread_self` as an integer), or 0.
    private let holder = ManagedAtomic<UInt>(0)

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Whether the calling thread holds the lock through `holding`.
    private var heldByThisThread: Bool { holder.load(ordering: .relaxed) == UInt(pthread_self()) }

    /// Runs `body` with the value, locking unless this thread holds it through `holding`.
    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        if heldByThisThread { return try body(&value) }
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Runs `body` with the value if the lock is free now; nil otherwise.
    func withLockIfAvailable<T>(_ body: (inout Value) throws -> T) rethrows -> T? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Holds the lock while `body` runs (nested `withLock` calls on this thread pass through).
    func holding<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        if heldByThisThread { return try body() }
        pthread_mutex_lock(mutex)
        holder.store(UInt(pthread_self()), ordering: .relaxed)
        defer {
            holder.store(0, ordering: .relaxed)
            pthread_mutex_unlock(mutex)
        }
        return try body()
    }
}
