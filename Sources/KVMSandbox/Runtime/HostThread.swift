import Atomics
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Host threads of the library's own: a child process's whole life, and the guest work an
/// `async` API hands off so that Swift's cooperative thread pool never blocks on a guest.
enum HostThread {
    /// The stack a vCPU thread gets (the run loop, the Linux layer and libdw's unwinding).
    static let stackSize = 8 << 20

    /// Starts `body` on a new detached thread with the kick signal (`VCPUInterrupter.signal`)
    /// unblocked, so that a `KVM_RUN` on it can be interrupted. The host's errno when it
    /// refuses a thread.
    static func start(_ body: @escaping @Sendable () -> Void) -> Errno? {
        final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
        _ = VCPUInterrupter.signal  // its handler, before any kick can reach the thread
        var thread = pthread_t()
        // SAFETY: the retained box is released by the thread, its only user (or below if none starts).
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setstacksize(&attributes, stackSize)
        let result = pthread_create(&thread, &attributes, { context in
            _ = VCPUInterrupter.unblockSignalOnThisThread()
            let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
            box.body()
            return nil
        }, context)
        pthread_attr_destroy(&attributes)
        guard result == 0 else {
            Unmanaged<Box>.fromOpaque(context).release()
            return Errno(rawValue: result)
        }
        pthread_detach(thread)
        return nil
    }

    /// Runs `body` on `worker`'s host thread and suspends the caller until it is done: the
    /// cooperative pool's thread is free meanwhile. `onCancel` runs (on the cancelling thread)
    /// when the calling task is cancelled while `body` runs; `body` itself decides what that
    /// means (a sandbox's run ends with `.interrupted`).
    static func run<R: Sendable>(on worker: HostWorker, _ body: @Sendable () -> R,
                                 onCancel: @Sendable () -> Void = {}) async -> R {
        await withoutActuallyEscaping(body) { body in
            await withoutActuallyEscaping(onCancel) { onCancel in
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<R, Never>) in
                        // `body` must not outlive this call (`withoutActuallyEscaping` checks): the
                        // thread takes it out of the hand-off and drops it before resuming us.
                        let handOff = HandOff(body)
                        let job: @Sendable () -> Void = {
                            let value: R
                            do {
                                let body = handOff.take()
                                value = body()
                            }
                            continuation.resume(returning: value)
                        }
                        worker.submit(job)
                    }
                } onCancel: {
                    onCancel()
                }
            }
        }
    }

    /// A closure handed to exactly one other thread, which takes it out (leaving nothing behind).
    ///
    /// (@unchecked: `body` is written once, before the job is handed over: the worker's lock
    /// orders that before its thread's `take`.)
    private final class HandOff<R>: @unchecked Sendable {
        private var body: (@Sendable () -> R)?
        init(_ body: @escaping @Sendable () -> R) { self.body = body }
        func take() -> @Sendable () -> R {
            defer { body = nil }
            return body!
        }
    }
}

/// A host thread that runs jobs one at a time, kept for the life of what owns it (a pooled VM):
/// handing a request to a sleeping thread costs a wake-up, not a `pthread_create` and the page
/// faults of a fresh stack (~100 us per request on PVM, measured with `bench`'s pooled request).
/// The thread ends when the worker is released.
final class HostWorker: Sendable {
    /// What the thread and the worker share; the thread holds it, not the worker, so releasing
    /// the worker ends the thread.
    ///
    /// (@unchecked: `job` and `quitting` are only touched with `lock` held.)
    private final class Queue: @unchecked Sendable {
        let lock = ConditionLock()
        var job: (@Sendable () -> Void)?
        var quitting = false
        /// Set with `job`, read without the lock while the thread spins.
        let pending = ManagedAtomic<UInt8>(0)
    }

    /// How long the thread looks for the next job before it sleeps: 50 us where another CPU
    /// can run the caller meanwhile (a hand-off then costs ~17 us instead of ~41 us of two
    /// wake-ups on this PVM machine), none on one CPU, where spinning would only delay it.
    static let spinNanoseconds: UInt64 = availableCPUs() > 1 ? 50_000 : 0

    private let queue = Queue()

    /// Starts the thread; the host's errno when it refuses one.
    init() throws(SandboxError) {
        let queue = self.queue
        if let error = HostThread.start({ HostWorker.loop(queue) }) {
            throw .hostResource(operation: "pthread_create (a pooled VM's thread)", errno: error)
        }
    }

    deinit {
        queue.lock.withLock {
            queue.quitting = true
            queue.lock.broadcast()
        }
    }

    /// Runs `job` on the thread. The worker runs one job at a time: its owner (the pool's lease)
    /// never submits while one runs.
    func submit(_ job: @escaping @Sendable () -> Void) {
        queue.lock.withLock {
            queue.job = job
            queue.pending.store(1, ordering: .releasing)
            queue.lock.broadcast()
        }
    }

    private static func loop(_ queue: Queue) {
        while true {
            // A request that follows this one closely finds the thread awake: look for a while
            // (`spinNanoseconds`) before sleeping on the condition variable.
            let spinEnd = monotonicNanoseconds() &+ spinNanoseconds
            while queue.pending.load(ordering: .acquiring) == 0, monotonicNanoseconds() < spinEnd {}
            queue.lock.lock()
            while queue.job == nil, !queue.quitting { queue.lock.wait() }
            queue.pending.store(0, ordering: .relaxed)
            let job = queue.job
            queue.job = nil
            let quitting = queue.quitting
            queue.lock.unlock()
            if let job { job() } else if quitting { return }
        }
    }
}
