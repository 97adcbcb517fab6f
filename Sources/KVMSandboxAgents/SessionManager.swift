import Dispatch
import KVMSandbox
import Logging
import Metrics

/// The sessions of `kvmsandbox mcp`: one micro-VM each, forked from a warm snapshot of the
/// Python driver (booted once), created on first use, closed on request or when idle.
public actor SessionManager {
    /// What the manager was configured with.
    public nonisolated let configuration: AgentConfiguration
    private var snapshot: Snapshot?
    private var sessions: [String: AgentSession] = [:]
    /// Forks made and warmed up ahead of need (`AgentConfiguration.spareSessions`).
    private var spares: [AgentSession] = []
    private var refilling = false
    private let logger: Logger
    /// Counters for the log and the `status` of the server.
    public private(set) var counters = Counters()
    /// The same figures through swift-metrics (`kvmsandbox mcp --metrics`: Prometheus).
    private let metrics = AgentMetrics()

    /// What the sessions did so far.
    public struct Counters: Sendable, Equatable {
        /// Sessions opened.
        public var opened = 0
        /// Sessions closed (by the agent, idle, or at shutdown).
        public var closed = 0
        /// Requests (cells, commands, file operations) served.
        public var requests = 0
        /// Requests that ran past the cell timeout.
        public var timeouts = 0
        /// Sessions restarted after their interpreter ended.
        public var restarts = 0
    }

    /// Errors of the manager itself (a session's own failures are replies, not errors).
    public enum Failure: Error, Sendable, CustomStringConvertible {
        /// `maximumSessions` are open.
        case tooManySessions(Int)
        /// The session name is not acceptable.
        case badSessionName(String)
        /// The Python driver did not reach its ready point.
        case bootFailed(String)
        /// The configuration cannot work.
        case invalidConfiguration(String)

        /// A sentence for the agent.
        public var description: String {
            switch self {
            case .tooManySessions(let limit):
                return "\(limit) sessions are open, the most this server allows; close one (close_session) first"
            case .badSessionName(let name):
                return "a session name is 1 to 64 letters, digits, '-', '_' or '.', not \(name.debugDescription.prefix(80))"
            case .bootFailed(let reason): return "the Python sandbox could not start: \(reason)"
            case .invalidConfiguration(let reason): return "invalid configuration: \(reason)"
            }
        }
    }

    /// A manager with `configuration`; nothing is booted until `boot()` or the first session.
    public init(configuration: AgentConfiguration, logger: Logger = Logger(label: "kvmsandbox.mcp")) throws(Failure) {
        if let problem = configuration.problem { throw .invalidConfiguration(problem) }
        self.configuration = configuration
        self.logger = logger
    }

    /// Boots the driver to its ready point and snapshots it there (once).
    public func boot() throws(Failure) {
        guard snapshot == nil else { return }
        let started = ContinuousClock.now
        let configuration = self.configuration.bootConfiguration()
        let sandbox: Sandbox
        let outcome: RunOutcome
        do {
            sandbox = try Sandbox(elfPath: configuration.programPath ?? self.configuration.python, configuration: configuration)
            outcome = try sandbox.runUntilReady(at: .firstInputRead)
        } catch {
            throw .bootFailed("\(error)")
        }
        guard outcome == .ready else {
            let tail = String(decoding: sandbox.capturedOutput(fd: 2).suffix(1500), as: UTF8.self)
            throw .bootFailed("the driver ended before it was ready (\(outcome))" + (tail.isEmpty ? "" : ":\n" + tail))
        }
        do { snapshot = try Snapshot(of: sandbox) } catch { throw .bootFailed("cannot snapshot the driver: \(error)") }
        refillSpares()
        logger.info("python sessions ready", metadata: [
            "boot_ms": "\((ContinuousClock.now - started).seconds * 1000)", "preload": "\(self.configuration.preload)",
        ])
    }

    /// Session names the agent may use: short, plain.
    static func isAcceptable(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count) && name.unicodeScalars.allSatisfy {
            ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || $0 == "-" || $0 == "_" || $0 == "."
        }
    }

    /// The session called `name`, opened (forked from the warm snapshot) when it is new.
    func session(_ name: String) throws(Failure) -> (session: AgentSession, new: Bool) {
        guard Self.isAcceptable(name) else { throw .badSessionName(name) }
        if let session = sessions[name] { return (session, false) }
        guard sessions.count < configuration.maximumSessions else { throw .tooManySessions(configuration.maximumSessions) }
        try boot()
        guard let snapshot else { throw .bootFailed("no snapshot") }
        let session: AgentSession
        if !spares.isEmpty {
            session = spares.removeFirst()
        } else {
            do { session = try AgentSession(snapshot: snapshot) } catch { throw .bootFailed("cannot fork a session: \(error)") }
        }
        sessions[name] = session
        counters.opened += 1
        metrics.opened(open: sessions.count)
        logger.info("session opened", metadata: ["session": "\(name)", "open": "\(sessions.count)"])
        return (session, true)
    }

    /// Keeps `spareSessions` warmed-up forks ready, in the background (one refill at a time).
    func refillSpares() {
        guard !refilling, let snapshot, spares.count < configuration.spareSessions,
              sessions.count + spares.count < configuration.maximumSessions + configuration.spareSessions else { return }
        refilling = true
        let timeout = configuration.cellTimeout.seconds
        Task {
            defer { self.refilled() }
            guard let spare = try? AgentSession(snapshot: snapshot), await spare.warmUp(timeout: timeout) else { return }
            self.adoptSpare(spare)
        }
    }

    private func adoptSpare(_ spare: AgentSession) { spares.append(spare) }

    private func refilled() {
        refilling = false
        if spares.count < configuration.spareSessions { refillSpares() }
    }

    /// Runs `request` in session `name` (opened when new) and returns the driver's reply.
    public func perform(_ request: SessionRequest, in name: String) async throws(Failure) -> SessionReply {
        let (session, _) = try session(name)
        counters.requests += 1
        let started = ContinuousClock.now
        let reply = await session.perform(request, timeout: configuration.cellTimeout.seconds, outputLimit: configuration.outputLimit)
        // Replace a spare taken for a new session only now: forking and warming one up beside
        // the session's first cell would slow that cell down.
        refillSpares()
        metrics.request(op: request.op, reply: reply, duration: ContinuousClock.now - started)
        if reply.error?.type == "Timeout" { counters.timeouts += 1 }
        if reply.restarted == true { counters.restarts += 1 }
        logger.info("request", metadata: [
            "session": "\(name)", "op": "\(request.op)", "us": "\(Int((ContinuousClock.now - started).seconds * 1e6))",
            "vm_us": "\(reply.microseconds ?? 0)", "exits": "\(reply.exits ?? 0)",
            "error": "\(reply.error?.type ?? "-")",
        ])
        return reply
    }

    /// Closes session `name` (stopping what it runs); false when there is none.
    @discardableResult
    public func close(_ name: String) -> Bool {
        guard let session = sessions.removeValue(forKey: name) else { return false }
        session.interrupt()
        counters.closed += 1
        metrics.closed(open: sessions.count)
        logger.info("session closed", metadata: ["session": "\(name)", "open": "\(sessions.count)"])
        return true
    }

    /// Starts session `name` afresh from the warm snapshot (closing it first when open).
    public func reset(_ name: String) throws(Failure) {
        guard Self.isAcceptable(name) else { throw .badSessionName(name) }
        close(name)
        _ = try session(name)
    }

    /// The names of the open sessions.
    public var openSessions: [String] { sessions.keys.sorted() }

    /// Closes sessions idle for longer than the configuration allows; returns their names.
    @discardableResult
    public func closeIdleSessions(now: ContinuousClock.Instant = .now) -> [String] {
        guard let idle = configuration.sessionIdle else { return [] }
        let stale = sessions.filter { _, session in
            let activity = session.currentActivity
            return !activity.running && now - activity.lastUsed > idle
        }.map(\.key)
        for name in stale { close(name) }
        return stale
    }

    /// Closes every session and drops the spares.
    public func closeAll() {
        for name in sessions.keys.sorted() { close(name) }
        spares.removeAll()
    }

    /// Closes idle sessions every few seconds until the task is cancelled.
    public func reapIdleSessions() async {
        guard let idle = configuration.sessionIdle else { return }
        let period = min(idle, .seconds(5))
        while !Task.isCancelled {
            try? await Task.sleep(for: period)
            closeIdleSessions()
        }
    }
}
