import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The AF_UNIX socket names of one sandbox (`bind` to a path, or to an abstract name), shared
/// by all its processes and the programs they exec: gpg's agent, a build server, a test that
/// talks to a daemon it started. A name leads only to a socket of the same sandbox, never to
/// a host socket: binding creates nothing on the host, and connecting looks only here.
final class UnixSocketNames: Sendable {
    private let listeners = HostMutex<[String: UnixListener]>([:])
    /// Connections queued and not yet accepted, over every listener of the sandbox: each holds
    /// a host descriptor, a resource of the whole host process. (Its own object, so listeners
    /// refer to it without keeping the names alive.)
    fileprivate let queued = QueuedConnections()

    /// Names bound at once in one sandbox (a refusal past it: `EADDRINUSE`).
    static let maximumNames = 256
    /// Connections queued at once in one sandbox (past it, `connect` is `EAGAIN`).
    static let maximumQueued = 256

    /// Binds `name` (a normalized guest path, or an abstract name starting with NUL): its
    /// listener, or nil when the name is taken (or too many are).
    func bind(_ name: String) -> UnixListener? {
        listeners.withLock { listeners in
            guard listeners[name] == nil, listeners.count < Self.maximumNames else { return nil }
            let listener = UnixListener(queued: queued)
            listeners[name] = listener
            return listener
        }
    }

    /// The listener bound to `name`, if any.
    func listener(_ name: String) -> UnixListener? { listeners.withLock { $0[name] } }

    /// Forgets `name` (its path was unlinked): true when it was bound.
    func unbind(_ name: String) -> Bool { listeners.withLock { $0.removeValue(forKey: name) != nil } }

    /// Whether `name` is bound (a socket file for `stat` and `unlink`).
    func isBound(_ name: String) -> Bool { listeners.withLock { $0[name] != nil } }
}

/// A bound AF_UNIX stream socket: once listening, each `connect` makes a host socket pair,
/// keeps one end for `accept` (up to the backlog) and gives the other to the connecting
/// socket. The accepting process's idle wait watches `doorbell`, rung by each connect.
final class UnixListener: Sendable {
    private let state = HostMutex<(listening: Bool, backlog: Int, queue: [HostFile])>((false, 0, []))
    /// Rung when a connection is queued.
    let doorbell = Doorbell()
    /// The sandbox's count of queued connections, which this listener adds to.
    private let queued: QueuedConnections

    fileprivate init(queued: QueuedConnections) { self.queued = queued }

    deinit { queued.release(state.withLock { $0.queue.count }) }

    /// The largest backlog honoured.
    static let maximumBacklog = 128

    /// `listen(backlog)`: connections are queued from now on.
    func listen(backlog: Int) {
        state.withLock { $0.listening = true; $0.backlog = min(max(backlog, 1), Self.maximumBacklog) }
    }

    var isListening: Bool { state.withLock { $0.listening } }

    /// A connection for the connecting socket: its end of a new socket pair, the other queued
    /// here. `ECONNREFUSED` when not listening; `EAGAIN` when the backlog or the sandbox's
    /// queue is full (Linux would make a blocking connect wait there; the guest retries).
    func connect() -> Result<HostFile, Errno> {
        var ends: [Int32] = [-1, -1]
        let outcome: Result<HostFile, Errno> = state.withLock { state in
            guard state.listening else { return .failure(.connectionRefused) }
            guard state.queue.count < state.backlog, queued.take() else { return .failure(.resourceTemporarilyUnavailable) }
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
                let error = Errno.current
                queued.release(1)
                return .failure(error)
            }
            state.queue.append(HostFile(fd: ends[1]))
            return .success(HostFile(fd: ends[0]))
        }
        if case .success = outcome { doorbell?.ring() }
        return outcome
    }

    /// The oldest queued connection, if any.
    func accept() -> HostFile? {
        let taken = state.withLock { $0.queue.isEmpty ? nil : $0.queue.removeFirst() }
        if taken != nil { queued.release(1) }
        return taken
    }

    /// Whether a connection waits to be accepted.
    var hasPending: Bool { state.withLock { !$0.queue.isEmpty } }
}

/// How many connections the listeners of one sandbox hold queued, against
/// `UnixSocketNames.maximumQueued`.
private final class QueuedConnections: Sendable {
    private let count = HostMutex(0)

    /// Counts one more; false when the sandbox's queue is full.
    func take() -> Bool {
        count.withLock { count in
            guard count < UnixSocketNames.maximumQueued else { return false }
            count += 1
            return true
        }
    }

    /// Counts `n` fewer (accepted, or dropped with their listener).
    func release(_ n: Int) { count.withLock { $0 = max(0, $0 - n) } }
}
