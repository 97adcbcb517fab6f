import CHost
import SystemPackage
import Atomics
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The process-wide thread that serves the mailboxes of running sandboxes (exitless host calls).
///
/// Policy, so that it only ever helps:
/// - one thread for all sandboxes, started on first use, and only where at least two CPUs are
///   available to this process (`HostCallTransport.automatic`);
/// - it spins over the registered mailboxes while calls arrive, and after `idleLimit` without
///   one it clears every mailbox's `polling` flag (guests then call by exit) and sleeps until
///   a sandbox registers or a guest makes an embedder call by exit;
/// - a VM whose posts keep going unanswered while the poller spins (it has no core) is told
///   to stop posting for a while (`ExitlessServer`);
/// - one request per mailbox per pass, so no guest can keep it from the others.
///
/// (@unchecked: its state is in `HostMutex`es and atomics; the wake mutex and condition are pthread objects allocated for the process's life.)
final class MailboxPoller: @unchecked Sendable {
    static let shared = MailboxPoller()

    /// Spin this long without a request before sleeping.
    static let idleLimit: UInt64 = 200_000

    private struct Registry {
        var servers: [ObjectIdentifier: ExitlessServer] = [:]
        /// -1: any CPU.
        var pinnedCPU: Int32 = -1
        var appliedCPU: Int32 = -1
    }
    private let registry = HostMutex(Registry())
    /// Whether the poller thread runs (started by the first `start()`).
    private let started = HostMutex(false)
    /// Held while a pass touches servers: `unregister` waits on it.
    private let pass = HostMutex(false)  // (guards code, not this value)
    /// Bumped (under the registry lock) whenever the set of servers changes.
    private let generation = ManagedAtomic<UInt64>(0)
    private let sleeping = ManagedAtomic<Bool>(true)
    /// Set by `noteExitCall`: a guest made a call by exit since the poller last looked.
    private let activity = ManagedAtomic<Bool>(false)
    /// Set by `wake`; the poller spins only when asked (a run started, or a guest called by exit).
    private let wakeRequested = ManagedAtomic<Bool>(false)
    private let wakeLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wakeCondition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    private init() {
        pthread_mutex_init(wakeLock, nil)
        pthread_cond_init(wakeCondition, nil)
    }

    /// Starts serving `server` (at the start of a run). `eagerly`: the guest may post from its
    /// first call and the poller wakes now; otherwise the poller wakes at the guest's first
    /// embedder call by exit, so runs that make none cost only this registration.
    func register(_ server: ExitlessServer, eagerly: Bool) {
        registry.withLock { registry in
            registry.servers[ObjectIdentifier(server)] = server
            generation.wrappingIncrement(ordering: .releasing)
        }
        guard eagerly else { return }
        // Post from the first call: if the poller is slow to come, the guest's bounded spin
        // falls back to an exit, which serves the request just as well.
        server.mailbox.setPolling(true)
        wake()
    }

    /// Stops serving `server`; when this returns, the poller no longer touches it.
    func unregister(_ server: ExitlessServer) {
        registry.withLock { registry in
            registry.servers[ObjectIdentifier(server)] = nil
            generation.wrappingIncrement(ordering: .releasing)
        }
        pass.withLock { _ in }  // waits for a pass in progress
        server.mailbox.setPolling(false)
    }

    /// A guest made an embedder call by exit (it found no poller, or gave up spinning). Wakes
    /// the poller, unless `server` is suspended from posting (the poller had no core for it).
    func noteExitCall(from server: ExitlessServer) {
        // A guest busy making calls by exit (calls the poller may not serve) is not idle: keep
        // spinning for its next postable one.
        if !activity.load(ordering: .relaxed) { activity.store(true, ordering: .relaxed) }
        if sleeping.load(ordering: .relaxed), server.shouldPoll(now: monotonicNanoseconds()) { wake() }
    }

    /// Whether the poller is spinning now (a fallback then means it had no core, not that it slept).
    var isSpinning: Bool { !sleeping.load(ordering: .relaxed) }

    /// Pins the poller thread to `cpu` (nil: any CPU) from its next spin on; for tests and
    /// benchmarks that put everything on one core.
    func pin(cpu: Int?) {
        registry.withLock { $0.pinnedCPU = cpu.map(Int32.init) ?? -1 }
        wake()
    }

    private func wake() {
        wakeRequested.store(true, ordering: .relaxed)
        pthread_mutex_lock(wakeLock)
        pthread_cond_signal(wakeCondition)
        pthread_mutex_unlock(wakeLock)
    }

    /// Starts the poller thread unless it runs; throws (`SandboxError.hostResource`) when the
    /// host will not give it one, so the run that needs it fails instead of the process.
    func start() throws(SandboxError) {
        try started.withLock { (started: inout Bool) throws(SandboxError) in
            guard !started else { return }
            var thread = pthread_t()
            // SAFETY: unretained: `shared` lives for the process's life.
            let context = Unmanaged.passUnretained(self).toOpaque()
            let result = pthread_create(&thread, nil, { context in
                Unmanaged<MailboxPoller>.fromOpaque(context!).takeUnretainedValue().loop()  // never returns
            }, context)
            guard result == 0 else {
                throw .hostResource(operation: "pthread_create (the exitless-call poller)", errno: Errno(rawValue: result))
            }
            pthread_detach(thread)
            started = true
        }
    }

    private func servers() -> (UInt64, [ExitlessServer]) {
        registry.withLock { (generation.load(ordering: .acquiring), Array($0.servers.values)) }
    }

    private func loop() -> Never {
        while true {
            sleepUntilWorthPolling()
            spin()
        }
    }

    private func sleepUntilWorthPolling() {
        sleeping.store(true, ordering: .relaxed)
        pthread_mutex_lock(wakeLock)
        while true {
            let empty = registry.withLock { $0.servers.isEmpty }
            if !empty && wakeRequested.exchange(false, ordering: .relaxed) { break }
            // `wake` signals under this lock; the 1 s timeout is only a safety net.
            var deadline = timespec()
            clock_gettime(CLOCK_REALTIME, &deadline)
            deadline.tv_sec += 1
            pthread_cond_timedwait(wakeCondition, wakeLock, &deadline)
        }
        pthread_mutex_unlock(wakeLock)
        sleeping.store(false, ordering: .relaxed)
    }

    private func spin() {
        let (wanted, applied) = registry.withLock { ($0.pinnedCPU, $0.appliedCPU) }
        if wanted != applied {
            _ = wanted >= 0 ? chost_pin_to_cpu(wanted) : chost_unpin()
            registry.withLock { $0.appliedCPU = wanted }
        }
        var seen: UInt64 = 0
        var list: [ExitlessServer] = []
        /// Refreshes `list` when the registry changed; call with `pass` held, so that a server
        /// `unregister` has removed is never touched again.
        func refresh() {
            guard generation.load(ordering: .acquiring) != seen || list.isEmpty else { return }
            (seen, list) = servers()
            let now = monotonicNanoseconds()
            for server in list { server.mailbox.setPolling(server.shouldPoll(now: now)) }
        }
        var idleSince = monotonicNanoseconds()
        var iteration = 0
        var servedSinceCheck = false
        while true {
            iteration &+= 1
            // Reading a mailbox needs no lock (its memory lives as long as the server object);
            // serving one does, and re-checks that the server is still registered.
            if generation.load(ordering: .acquiring) != seen { pass.withLock { _ in refresh() } }
            var servedAny = false
            for server in list where server.hasPendingRequest {
                servedAny = pass.withLock { _ in
                    guard generation.load(ordering: .acquiring) == seen else { refresh(); return false }
                    return server.pollOnce()
                } || servedAny
            }
            if servedAny { servedSinceCheck = true }
            if iteration % 256 == 0, activity.exchange(false, ordering: .relaxed) { servedSinceCheck = true }
            // Read the clock rarely: it is not free in a VM.
            if iteration % 256 == 0 {
                let now = monotonicNanoseconds()
                // Guests whose suspension ended may post again.
                if iteration % 4096 == 0 {
                    pass.withLock { _ in
                        refresh()
                        for server in list where server.shouldPoll(now: now) { server.mailbox.setPolling(true) }
                    }
                }
                if servedSinceCheck {
                    idleSince = now
                    servedSinceCheck = false
                } else if list.isEmpty || now - idleSince > Self.idleLimit {
                    break
                }
            }
        }
        pass.withLock { _ in
            refresh()
            for server in list { server.mailbox.setPolling(false) }
        }
    }
}
