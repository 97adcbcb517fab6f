import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Enforces run deadlines with one process-wide thread: it sleeps until the nearest deadline and
/// kicks the vCPU thread whose deadline passed out of `KVM_RUN` (`immediate_exit` plus a signal),
/// however that guest is spinning.
///
/// It owns its thread instead of borrowing a shared pool: a pool whose workers are all busy
/// running guests would never get round to firing their deadlines.
final class Watchdog: Sendable {
    /// A deadline armed for one run.
    struct Token: Sendable, Hashable { fileprivate let id: UInt64 }

    private struct Entry {
        let deadline: UInt64
        let interrupter: VCPUInterrupter
        let thread: pthread_t
    }
    private struct State {
        var entries: [UInt64: Entry] = [:]
        var fired: Set<UInt64> = []
        var nextID: UInt64 = 0
        /// When the thread will next look at the entries on its own (`.max`: only when woken).
        /// An `arm` for a later deadline need not wake it: runs of the same length, one after
        /// another, then cost no wake-up (and no context switch) at all.
        var sleepingUntil: UInt64 = 0
    }
    private let state = HostMutex(State())
    /// A pipe: the thread polls the read end; `arm` writes a byte to wake it for a nearer deadline.
    private let wakeRead: Int32, wakeWrite: Int32

    /// Why the thread could not be started (no pipe, no thread), if it could not.
    private let startFailure = HostMutex<SandboxError?>(nil)

    /// The process's watchdog, made on first use (`started()` says whether it runs).
    static let shared = Watchdog()

    /// The process's watchdog, or why it could not be started: a run that cannot have its
    /// deadline enforced does not start (`SandboxError.hostResource`), rather than the process dying.
    static func started() throws(SandboxError) -> Watchdog {
        if let failure = shared.startFailure.withLock({ $0 }) { throw failure }
        return shared
    }

    private init() {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            let error = Errno.current
            (wakeRead, wakeWrite) = (-1, -1)
            startFailure.withLock { $0 = .hostResource(operation: "pipe (the watchdog's)", errno: error) }
            return
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        (wakeRead, wakeWrite) = (fds[0], fds[1])
        _ = VCPUInterrupter.signal  // install the kick handler before any kick
        var thread = pthread_t()
        // SAFETY: the retain is never released: the thread uses the watchdog for the process's life.
        let context = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<Watchdog>.fromOpaque(context!).takeUnretainedValue().loop()
        }, context)
        guard result == 0 else {
            Unmanaged<Watchdog>.fromOpaque(context).release()
            startFailure.withLock { $0 = .hostResource(operation: "pthread_create (the watchdog's thread)", errno: Errno(rawValue: result)) }
            return
        }
        pthread_detach(thread)
    }

    /// Arms a deadline `seconds` from now for the calling thread's vCPU.
    func arm(seconds: Double, interrupter: VCPUInterrupter) -> Token {
        let deadline = monotonicNanoseconds() &+ UInt64(min(seconds, 1e9) * 1e9)
        let thread = pthread_self()
        let (id, wake) = state.withLock { state in
            state.nextID += 1
            state.entries[state.nextID] = Entry(deadline: deadline, interrupter: interrupter, thread: thread)
            guard deadline < state.sleepingUntil else { return (state.nextID, false) }
            state.sleepingUntil = deadline
            return (state.nextID, true)
        }
        if wake {
            var byte: UInt8 = 1
            _ = write(wakeWrite, &byte, 1)
        }
        return Token(id: id)
    }

    /// Whether the deadline has passed and the vCPU was kicked.
    func fired(_ token: Token) -> Bool { state.withLock { $0.fired.contains(token.id) } }

    /// Forgets the deadline; no kick for it happens after this returns.
    func disarm(_ token: Token) {
        state.withLock { state in
            state.entries[token.id] = nil
            state.fired.remove(token.id)
        }
    }

    private func loop() -> UnsafeMutableRawPointer? {
        var pollFD = pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)
        var drain = [UInt8](repeating: 0, count: 64)
        while true {
            let now = monotonicNanoseconds()
            // Kick under the lock, so that `disarm` (which takes it) orders after every kick.
            let next: UInt64? = state.withLock { state in
                var nearest: UInt64?
                for (id, entry) in state.entries where !state.fired.contains(id) {
                    if entry.deadline <= now {
                        state.fired.insert(id)
                        entry.interrupter.interrupt(thread: entry.thread)
                    } else {
                        nearest = min(nearest ?? .max, entry.deadline)
                    }
                }
                state.sleepingUntil = nearest ?? .max
                return nearest
            }
            // Milliseconds, rounded up, so the thread never wakes early and spins.
            let timeout = next.map { Int32(min(($0 - now + 999_999) / 1_000_000, 60_000)) } ?? -1
            _ = poll(&pollFD, 1, timeout)
            _ = drain.withUnsafeMutableBytes { read(wakeRead, $0.baseAddress, $0.count) }
        }
    }
}
