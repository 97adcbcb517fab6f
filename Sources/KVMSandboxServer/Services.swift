import Logging
import Prometheus
import ServiceLifecycle

/// A server as a swift-service-lifecycle `Service`: `run()` serves until the task is cancelled
/// or the group shuts down gracefully (SIGTERM, SIGINT), when it stops accepting and lets the
/// requests in flight finish.
public struct ServingService: Service {
    private let serve: @Sendable () async throws -> Void
    private let onGracefulShutdown: @Sendable () -> Void

    /// A service that runs `serve` (e.g. `{ try await server.serve(host: h, port: p) }`);
    /// `onGracefulShutdown` is told when a graceful shutdown begins (e.g. `counters.stopping()`).
    public init(onGracefulShutdown: @escaping @Sendable () -> Void = {}, _ serve: @escaping @Sendable () async throws -> Void) {
        self.serve = serve
        self.onGracefulShutdown = onGracefulShutdown
    }

    /// Serves until the task is cancelled or a graceful shutdown.
    public func run() async throws {
        do {
            try await withGracefulShutdownHandler {
                try await cancelWhenGracefulShutdown { try await serve() }
            } onGracefulShutdown: {
                onGracefulShutdown()
            }
        } catch is CancellationError {
            // Stopped by a graceful shutdown (or the group's cancellation): a normal end.
        }
    }
}

/// The operations endpoint on a port of its own: `GET /metrics` in Prometheus's text format
/// from `registry` (bootstrap swift-metrics with `PrometheusMetricsFactory(registry:)` so the
/// servers' `ServerCounters` land there), with `# HELP` lines from `help`; `/healthz` (200
/// while the process serves: liveness) and `/readyz` (200 when `readiness` says a request would
/// be taken now, else 503 with the reason: readiness). Anything else: 404.
public struct MetricsEndpoint: Service {
    /// Where it listens.
    public let host: String, port: Int
    /// What it exports.
    public let registry: PrometheusCollectorRegistry
    private let help: [String: String]
    private let readiness: @Sendable () -> (ready: Bool, reason: String)
    private let bound: @Sendable (Int) -> Void
    private let logger = Logger(label: "kvmsandbox.metrics")

    /// An endpoint on `host`:`port` (0: any free port, reported to `bound`); `help` gives the
    /// `# HELP` text of metrics by name, `readiness` answers `/readyz`.
    public init(host: String, port: Int, registry: PrometheusCollectorRegistry, help: [String: String] = [:],
                readiness: @escaping @Sendable () -> (ready: Bool, reason: String) = { (true, "ready") },
                bound: @escaping @Sendable (Int) -> Void = { _ in }) {
        (self.host, self.port, self.registry, self.help, self.readiness, self.bound) = (host, port, registry, help, readiness, bound)
    }

    /// A scraper needs little: a few connections, no bodies, short timeouts.
    static let limits: HTTPLimits = {
        var limits = HTTPLimits()
        limits.maximumConnections = 16
        limits.headerTimeout = 5
        limits.idleTimeout = 30
        limits.bodyTimeout = 5
        limits.maximumBody = 1 << 16
        limits.maximumBufferedBytes = 1 << 20
        return limits
    }()

    /// Serves until the task is cancelled or a graceful shutdown.
    public func run() async throws {
        let (registry, help, readiness) = (self.registry, self.help, self.readiness)
        try await ServingService {
            try await HTTPListener.run(host: host, port: port, limits: Self.limits, logger: logger, bound: bound) { head, _ in
                let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
                switch path {
                case "/metrics":
                    return .init(status: 200, contentType: "text/plain; version=0.0.4",
                                 body: Self.addingHelp(help, to: registry.emitToBuffer()))
                case "/healthz":
                    return .init(status: 200, contentType: "text/plain", body: Array("ok\n".utf8))
                case "/readyz":
                    let (ready, reason) = readiness()
                    return .init(status: ready ? 200 : 503, contentType: "text/plain", body: Array((reason + "\n").utf8))
                default:
                    return .init(status: 404, contentType: "text/plain", body: Array("here: /metrics, /healthz, /readyz\n".utf8))
                }
            }
        }.run()
    }

    /// `exposition` (Prometheus's text format) with a `# HELP` line before each `# TYPE` line
    /// of a metric `help` describes.
    static func addingHelp(_ help: [String: String], to exposition: [UInt8]) -> [UInt8] {
        guard !help.isEmpty else { return exposition }
        var out: [UInt8] = []
        out.reserveCapacity(exposition.count + help.count * 80)
        for line in exposition.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.starts(with: Array("# TYPE ".utf8)) {
                let name = String(decoding: line.dropFirst(7).prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self)
                if let text = help[name] { out += Array("# HELP \(name) \(text)\n".utf8) }
            }
            out += line
            out.append(UInt8(ascii: "\n"))
        }
        if exposition.last == UInt8(ascii: "\n") { out.removeLast() }
        return out
    }
}
