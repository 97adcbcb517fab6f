import Dispatch
import KVMSandbox
import Logging

/// Per-request isolation for an unmodified filter program (function mode): the program is
/// initialised once, up to its first read of standard input, and snapshotted there; every
/// request runs in a fork of that snapshot with the request body as its stdin, and the fork is
/// reset afterwards, so no request ever sees another's state.
///
/// ```swift
/// let server = try FunctionServer(program: "/usr/bin/python3", configuration: configuration, workers: 4)
/// let answer = try await server.handle(Array("6 * 7".utf8))   // the library API, no HTTP
/// try await server.serve(host: "127.0.0.1", port: 8080)        // HTTP: POST body in, stdout out
/// ```
public final class FunctionServer: Sendable {
    /// One request's answer: the program's stdout, and what became of it.
    public struct Answer: Sendable {
        /// 200 when the program exited 0; 504 when it ran past the timeout; 500 otherwise.
        public let status: Int
        /// What the program wrote to stdout (the response body).
        public let body: [UInt8]
        /// What it wrote to stderr (logged, never sent to the client).
        public let log: [UInt8]
        /// How its run ended.
        public let outcome: RunOutcome
        /// VM exits the run took.
        public var exits = 0
        /// Nanoseconds in the VM (waiting for a free VM and the reset not included).
        public var nanoseconds: UInt64 = 0
        /// The reset after the run: pages it copied back (what the request dirtied) and its time.
        public var reset = SandboxPool.ResetReport()
    }

    /// The ready-point snapshot requests are forked from now (a refresh replaces it).
    public var snapshot: Snapshot { pools.current.resource.snapshot }
    /// Forks of the current snapshot; a refresh builds a new pool, and the old one is released
    /// once its requests in flight finish.
    let pools: Refreshing<SandboxPool>
    /// Snapshots made by a refresh since the first.
    public var refreshes: Int { pools.refreshes }
    /// Each request's wall-clock limit (nil: the configuration's).
    public let requestTimeout: Double?
    /// What an HTTP client may cost the server (`serve`).
    public let limits: HTTPLimits
    let logger = Logger(label: "kvmsandbox.serve")

    /// Loads `program` with `configuration` (its stdout and stderr are captured per request),
    /// runs it to its first read of stdin and snapshots it there; up to `workers` forks then
    /// serve requests at once. Throws when the program ends before it reads stdin.
    /// Each request's run is limited to `requestTimeout` seconds (504 past it); booting to the
    /// ready point to `configuration.timeout`.
    public convenience init(program: String, configuration: SandboxConfiguration, workers: Int, requestTimeout: Double? = nil,
                            limits: HTTPLimits = .init()) throws {
        var configuration = configuration
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        let snapshot = try Snapshot(elfPath: program, configuration: configuration, readyAt: .firstInputRead)
        try self.init(snapshot: snapshot, workers: workers, requestTimeout: requestTimeout, limits: limits)
    }

    /// A server of `snapshot`, taken where the program reads its standard input (with stdout
    /// and stderr captured).
    /// `tracking`: how forks track the pages they dirty (nil: the fastest this KVM has).
    /// `limits`: what HTTP clients may cost (`serve`); throws for limits that cannot work.
    /// `refresh`: when to replace the snapshot with a fresh one made by `boot` (needed then).
    public init(snapshot: Snapshot, workers: Int, requestTimeout: Double? = nil, tracking: DirtyTracking? = nil,
                limits: HTTPLimits = .init(), refresh: RefreshPolicy = .init(), boot: (@Sendable () throws -> Snapshot)? = nil) throws {
        if let problem = limits.problem { throw HTTPLimitsError(problem) }
        if refresh.refreshes && boot == nil { throw HTTPLimitsError("refreshing the snapshot needs a way to boot a new one") }
        self.requestTimeout = requestTimeout
        self.limits = limits
        let capacity = max(1, workers)
        let first = try SandboxPool(snapshot: snapshot, capacity: capacity, prefork: capacity, tracking: tracking)
        pools = Refreshing(first, policy: refresh, logger: logger) {
            // (Never `first`: the closure would keep the first pool's VMs alive for good.)
            guard let boot else { throw HTTPLimitsError("no way to boot a new snapshot") }
            return try SandboxPool(snapshot: try boot(), capacity: capacity, prefork: capacity, tracking: tracking)
        }
        counters.setVMs(max(1, workers))
    }

    /// What the server has done so far.
    public let counters = ServerCounters()

    /// Serves one request in a fresh fork: `body` is the program's stdin.
    public func handle(_ body: [UInt8]) async throws -> Answer {
        counters.started()
        defer { counters.finished() }
        var reset = SandboxPool.ResetReport()
        var answer = try await pools.forRequest().resource.withSandbox({ vm in
            let started = DispatchTime.now().uptimeNanoseconds
            vm.standardInput = .bytes(body)
            if let requestTimeout { vm.timeout = requestTimeout }
            let outcome = try vm.run()
            let status: Int
            switch outcome {
            case .exited(status: 0): status = 200
            case .timedOut: status = 504
            default: status = 500
            }
            var answer = Answer(status: status, body: vm.capturedOutput(fd: 1), log: vm.capturedOutput(fd: 2), outcome: outcome)
            answer.nanoseconds = DispatchTime.now().uptimeNanoseconds &- started
            answer.exits = vm.statistics.exits
            return answer
        }, afterReset: { reset = $0 })
        answer.reset = reset
        counters.record(outcome: answer.outcome, nanoseconds: answer.nanoseconds, resetNanoseconds: reset.nanoseconds,
                        dirtyPages: reset.pages, exits: answer.exits)
        return answer
    }

    /// Listens on `host`:`port` (0: any free port, reported to `bound`) and answers every HTTP
    /// request with `handle(body)` until the task is cancelled. Each request gets an id (the
    /// client's `X-Request-Id` when it is a plain token), sent back in `X-Request-Id`, and one
    /// access line in the log; a 500 or 504 carries its reason in `X-KVMSandbox-Reason` and a
    /// one-line body (never the guest's stderr, which goes to the log).
    public func serve(host: String, port: Int, bound: @Sendable (Int) -> Void = { _ in }) async throws {
        let counters = self.counters
        try await HTTPListener.run(host: host, port: port, limits: limits, logger: logger, bound: {
            counters.listening()
            bound($0)
        }) { head, body in
            let received = DispatchTime.now().uptimeNanoseconds
            let id = RequestLog.id(offered: head.headers.first(name: "X-Request-Id"))
            let answer = try await self.handle(body)
            var response = HTTPListener.Response(status: answer.status, contentType: "application/octet-stream", body: answer.body,
                                                 headers: [("X-Request-Id", id)])
            let reason = answer.status == 200 ? nil : RequestLog.reason(answer.outcome)
            if let reason {
                response.contentType = "text/plain; charset=utf-8"
                response.body = Array((reason + "\n").utf8)
                response.headers.append(("X-KVMSandbox-Reason", reason))
            }
            self.logger.info("request", metadata: [
                "id": "\(id)", "method": "\(head.method.rawValue)", "path": "\(String(head.uri.prefix(256)))",
                "status": .stringConvertible(answer.status), "bytes_in": .stringConvertible(body.count),
                "bytes_out": .stringConvertible(response.body.count),
                "duration_ms": .stringConvertible(RequestLog.milliseconds(DispatchTime.now().uptimeNanoseconds &- received)),
                "vm_ms": .stringConvertible(RequestLog.milliseconds(answer.nanoseconds)), "exits": .stringConvertible(answer.exits),
                "dirty_pages": .stringConvertible(answer.reset.pages), "reset_us": .stringConvertible(answer.reset.nanoseconds / 1000),
                "outcome": "\(ServerCounters.label(answer.outcome))",
            ])
            if let reason {
                self.logger.warning("request failed", metadata: ["id": "\(id)", "reason": "\(reason)", "outcome": "\(answer.outcome)"])
            }
            RequestLog.guestOutput(answer.log, id: id, logger: self.logger)
            return response
        }
    }
}

/// `HTTPLimits` that cannot work (a zero connection limit, a negative timeout).
public struct HTTPLimitsError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
