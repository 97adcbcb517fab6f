import Foundation
import KVMSandbox
import Logging

/// Per-connection isolation for an unmodified server program (socket mode, kvmserver's model):
/// the server initialises once, up to where it waits for its first connection, and is
/// snapshotted there; each connection the host accepts is handed to a fork of that snapshot,
/// whose `accept` returns it, and the fork is reset once the guest is done with it (closed it
/// and waits for the next one), so no connection ever sees another's state.
///
/// ```swift
/// var configuration = SandboxConfiguration()
/// configuration.acceptsConnections = true
/// let snapshot = try Snapshot(elfPath: "/usr/bin/python3", configuration: configuration, readyAt: .connectionWait)
/// let server = SocketServer(snapshot: snapshot, workers: 4)
/// try await server.serve(host: "127.0.0.1", port: 8080)
/// ```
public final class SocketServer: Sendable {
    /// The ready-point snapshot connections are served from now (a refresh replaces it).
    public var snapshot: Snapshot { snapshots.current.resource }
    /// The current snapshot; a refresh boots a new one, and each worker forks it after the
    /// connection it is serving.
    let snapshots: Refreshing<Snapshot>
    /// Snapshots made by a refresh since the first.
    public var refreshes: Int { snapshots.refreshes }
    /// VMs serving connections at once (one host thread each).
    public let workers: Int
    /// Each connection's wall-clock limit (nil: the snapshot configuration's).
    public let connectionTimeout: Double?
    /// Whether each connection gets a pristine VM (a reset after it); false: one VM per
    /// worker serves connection after connection (reset only after a crash or a timeout).
    public let resetsEachConnection: Bool
    /// What the server has done so far.
    public let counters = ServerCounters(unit: .connection)
    let logger = Logger(label: "kvmsandbox.serve")

    /// How forks track the pages they dirty (nil: the fastest this KVM has).
    public let tracking: DirtyTracking?

    /// A server of `snapshot`, which must wait for connections (`Snapshot.waitsForConnections`).
    /// `refresh`: when to replace the snapshot with a fresh one made by `boot` (needed then).
    public init(snapshot: Snapshot, workers: Int, connectionTimeout: Double? = nil, resetsEachConnection: Bool = true,
                tracking: DirtyTracking? = nil, refresh: RefreshPolicy = .init(), boot: (@Sendable () throws -> Snapshot)? = nil) throws {
        self.tracking = tracking
        guard snapshot.waitsForConnections else {
            throw SandboxError.invalidConfiguration("the program was not snapshotted waiting for a connection")
        }
        if refresh.refreshes && boot == nil {
            throw SandboxError.invalidConfiguration("refreshing the snapshot needs a way to boot a new one")
        }
        snapshots = Refreshing(snapshot, policy: refresh, logger: logger) {
            guard let boot else { throw SandboxError.invalidConfiguration("no way to boot a new snapshot") }
            let fresh = try boot()
            guard fresh.waitsForConnections else {
                throw SandboxError.invalidConfiguration("the refreshed program was not snapshotted waiting for a connection")
            }
            return fresh
        }
        self.workers = max(1, workers)
        self.connectionTimeout = connectionTimeout
        self.resetsEachConnection = resetsEachConnection
    }

    /// Serves the connected socket `descriptor` (owned from now on) in `vm`, a fork paused where
    /// it waits for connections, until the guest is done with it; then resets `vm` (always when
    /// the guest ended or failed, else when `resetsEachConnection`). Returns how the run ended
    /// (`.ready`: the guest finished the connection and waits for the next).
    public func serve(connection descriptor: Int32, in vm: Sandbox) throws -> RunOutcome {
        counters.started()
        defer { counters.finished() }
        let started = DispatchTime.now().uptimeNanoseconds
        let id = RequestLog.id(offered: nil)
        let peer = RequestLog.peer(of: descriptor)
        let exitsBefore = vm.statistics.exits
        vm.offerConnection(descriptor)
        if let connectionTimeout { vm.timeout = connectionTimeout }
        let outcome = try vm.runUntilReady(at: .connectionWait)
        let exits = vm.statistics.exits - exitsBefore
        let served = DispatchTime.now().uptimeNanoseconds
        var dirtyPages = 0
        let stderr = vm.capturedOutput(fd: 2)
        vm.discardCapturedOutput()
        if outcome != .ready || resetsEachConnection {
            try vm.reset()
            dirtyPages = vm.statistics.pagesRestoredByLastReset
        }
        let finished = DispatchTime.now().uptimeNanoseconds
        counters.record(outcome: outcome, nanoseconds: served - started, resetNanoseconds: finished - served, dirtyPages: dirtyPages, exits: exits)
        logger.info("connection", metadata: [
            "id": "\(id)", "peer": "\(peer)", "duration_ms": .stringConvertible(RequestLog.milliseconds(finished &- started)),
            "vm_ms": .stringConvertible(RequestLog.milliseconds(served &- started)), "exits": .stringConvertible(exits),
            "dirty_pages": .stringConvertible(dirtyPages), "reset_us": .stringConvertible((finished &- served) / 1000),
            "outcome": "\(ServerCounters.label(outcome))",
        ])
        if outcome != .ready {
            logger.warning("connection failed", metadata: ["id": "\(id)", "outcome": "\(outcome)"])
        }
        RequestLog.guestOutput(stderr, id: id, logger: logger)
        return outcome
    }

    /// Listens on `host`:`port` (0: any free port, reported to `bound`) and serves every
    /// connection in a fork until the task is cancelled; connections being served then finish.
    public func serve(host: String, port: Int, bound: @Sendable (Int) -> Void = { _ in }) async throws {
        let listener = try ListeningSocket(host: host, port: port)
        bound(listener.port)
        logger.debug("serving on \(host):\(listener.port) with \(workers) VM(s)")
        let vms = try (0..<workers).map { _ in try snapshot.fork(tracking: tracking) }
        counters.setVMs(vms.count)
        counters.listening()
        let failures = FailureList()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                let group = DispatchGroup()
                for vm in vms {
                    let box = SandboxBox(vm)
                    group.enter()
                    Thread.detachNewThread {
                        defer { group.leave() }
                        var generation = 0
                        while let connection = listener.accept() {
                            do {
                                // A refreshed snapshot: this worker's next VM is a fork of it.
                                let (snapshot, current) = self.snapshots.forRequest()
                                if current != generation {
                                    generation = current
                                    do { box.sandbox = try snapshot.fork(tracking: self.tracking) } catch {
                                        self.logger.error("could not fork the refreshed snapshot (the old VM serves on): \(error)")
                                    }
                                }
                                _ = try self.serve(connection: connection, in: box.sandbox)
                            } catch {
                                failures.append(error)
                                self.logger.error("a VM failed on the host side: \(error)")
                                return
                            }
                        }
                    }
                }
                group.notify(queue: .global()) { done.resume() }
            }
        } onCancel: {
            listener.stop()
        }
        if let error = failures.first, !listener.stopped { throw error }
    }
}

/// The host's real listening TCP socket; blocking `accept` from several threads at once.
///
/// (@unchecked: `isStopped` is read and written under `lock`; `fd` and `port` are immutable.)
final class ListeningSocket: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private let lock = NSLock()
    private var isStopped = false

    init(host: String, port: Int) throws {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(truncatingIfNeeded: port)).bigEndian
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &address.sin_addr) == 1 else {
            throw SandboxError.invalidConfiguration("--listen takes an IPv4 address, not \(host)")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SandboxError.invalidConfiguration("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 1024) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw SandboxError.invalidConfiguration("cannot listen on \(host):\(port): \(message)")
        }
        var actual = sockaddr_in()
        var size = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &size) } }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: actual.sin_port))
    }

    /// The next connection (a blocking, close-on-exec descriptor), or nil once stopped.
    func accept() -> Int32? {
        while true {
            let connection = Glibc.accept(fd, nil, nil)
            if connection >= 0 {
                _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
                var one: Int32 = 1
                setsockopt(connection, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return connection
            }
            if stopped { return nil }
            if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE {
                if errno == EMFILE || errno == ENFILE { usleep(10_000) }
                continue
            }
            return nil
        }
    }

    /// Whether `stop` was called.
    var stopped: Bool { lock.withLock { isStopped } }

    /// Wakes every blocked `accept` (which then returns nil) and stops accepting.
    func stop() {
        lock.withLock { isStopped = true }
        shutdown(fd, Int32(SHUT_RDWR))
    }

    deinit { close(fd) }
}

/// A sandbox handed to the one thread that uses it.
/// (@unchecked: one worker thread owns it; it changes only on that thread, to a fork of a
/// refreshed snapshot.)
final class SandboxBox: @unchecked Sendable {
    var sandbox: Sandbox
    init(_ sandbox: Sandbox) { self.sandbox = sandbox }
}

/// Errors collected from worker threads.
///
/// (@unchecked: `errors` is read and written under `lock` only.)
final class FailureList: @unchecked Sendable {
    private let lock = NSLock()
    private var errors: [Error] = []
    var first: Error? { lock.withLock { errors.first } }
    func append(_ error: Error) { lock.withLock { errors.append(error) } }
}
