import Logging
import Prometheus
import ServiceLifecycle

/// A server as a swift-service-lifecycle `Service`: `run()` serves until the task is cancelled
/// or the group shuts down gracefully (SIGTERM, SIGINT), when it stops accepting and lets the
/// requests in flight finish.
public struct ServingService: Service {
    private let serve: @Sendable () async throws -> Void

    /// A service that runs `serve` (e.g. `{ try await server.serve(host: h, port: p) }`).
    public init(_ serve: @escaping @Sendable () async throws -> Void) { self.serve = serve }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await serve() }
        } catch is CancellationError {
            // Stopped by a graceful shutdown (or the group's cancellation): a normal end.
        }
    }
}

/// `GET /metrics` in Prometheus's text format on a port of its own (anything else: 404), from
/// `registry` (bootstrap swift-metrics with `PrometheusMetricsFactory(registry:)` so the
/// servers' `ServerCounters` land there).
public struct MetricsEndpoint: Service {
    /// Where it listens.
    public let host: String, port: Int
    /// What it exports.
    public let registry: PrometheusCollectorRegistry
    private let bound: @Sendable (Int) -> Void
    private let logger = Logger(label: "kvmsandbox.metrics")

    /// An endpoint on `host`:`port` (0: any free port, reported to `bound`).
    public init(host: String, port: Int, registry: PrometheusCollectorRegistry, bound: @escaping @Sendable (Int) -> Void = { _ in }) {
        (self.host, self.port, self.registry, self.bound) = (host, port, registry, bound)
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

    public func run() async throws {
        let registry = self.registry
        try await ServingService {
            try await HTTPListener.run(host: host, port: port, limits: Self.limits, logger: logger, bound: bound) { head, _ in
                guard head.uri == "/metrics" || head.uri.hasPrefix("/metrics?") else {
                    return .init(status: 404, contentType: "text/plain", body: Array("only /metrics here\n".utf8))
                }
                return .init(status: 200, contentType: "text/plain; version=0.0.4", body: registry.emitToBuffer())
            }
        }.run()
    }
}
