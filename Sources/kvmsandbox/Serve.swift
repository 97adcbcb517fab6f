import ArgumentParser
import Dispatch
import Foundation
import KVMSandbox
import KVMSandboxServer
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `kvmsandbox serve`: an unmodified program as a service with a pristine VM per request. The
/// program is initialised once up to its ready point and snapshotted there; a filter (function
/// mode) gets each HTTP request body as stdin and answers with its stdout; a server (socket
/// mode, kvmserver's model) gets each connection the host accepts, in a fork reset afterwards.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve requests with a program, each in a reset fork of its ready-point snapshot.",
        discussion: """
        The program initialises (imports, loads its data) until its ready point: its first read \
        of standard input, or its first wait for a connection on a socket it listens on. \
        Function mode (a filter): each HTTP request (any method, any path) runs in a fork with \
        the request body as stdin; the response is its stdout with status 200 when it exits 0, \
        504 past --timeout, 500 otherwise (stderr and the report are logged, never sent). \
        Socket mode (a server): the host listens on --listen; the guest's socket, bind and \
        listen are virtual, and each connection is what its accept returns, in a fork that is \
        reset once the guest closed it and waits for the next (--no-reset: reused). Outgoing \
        connections are refused. Examples:
          kvmsandbox serve --listen 127.0.0.1:8080 --ro Examples -- python3 Examples/upper.py
          kvmsandbox serve --listen 127.0.0.1:8081 --ro Examples/site -- python3 -m http.server -b 127.0.0.1 -d Examples/site 8000
          kvmsandbox serve --listen 127.0.0.1:8080 --snapshot site.snap --metrics 127.0.0.1:9100 --log-format json
        """)

    @Option(name: .long, help: "HOST:PORT to listen on (port 0: any free one, printed at start).")
    var listen: String = "127.0.0.1:8080"

    @Option(name: .long, help: "VMs serving requests at once.")
    var workers: Int = 2

    @Option(name: .long, parsing: .unconditional, help: "Wall-clock limit of each request (socket mode: each connection), in seconds or with a unit: 500ms, 10s, 2m (then 504, or the connection is closed).")
    var timeout: Seconds = 10

    @Flag(name: .long, help: "Socket mode: serve connection after connection in the same VM (no reset between them), for comparison.")
    var noReset = false

    @Option(name: .long, help: "How forks track dirtied pages: ring, bitmap or hotPages (pages dirtied by every request stay writable and are copied back untracked). Default: hotPages.")
    var dirtyTracking: String = "hotPages"

    @Option(name: .long, help: "Serve this snapshot file (from `kvmsandbox snapshot`) instead of booting a program.")
    var snapshot: String?

    @Option(name: .long, help: "HOST:PORT for a Prometheus /metrics endpoint (requests by outcome, latency, reset time, dirty pages, exits, VMs).")
    var metrics: String?

    @Option(name: .long, help: "Function mode: connections served at once; past it the server stops accepting (default 256).")
    var maxConnections: Int = 256

    @Option(name: .long, help: "Function mode: seconds a connection may take to send its first request header (default 10).")
    var headerTimeout: Double = 10

    @Option(name: .long, help: "Function mode: seconds a kept-alive connection may wait for its next request (default 30).")
    var idleTimeout: Double = 30

    @Option(name: .long, help: "Function mode: seconds a request may take to send its body (default 60).")
    var bodyTimeout: Double = 60

    @Option(name: .long, help: "Function mode: the largest request body, in bytes or with a K, M or G suffix (default 16M); larger ones get 413.")
    var maxBody: String = "16M"

    @Option(name: .long, help: "Function mode: request-body bytes buffered across all connections, with a K, M or G suffix (default 256M); past it, reading pauses.")
    var maxBuffered: String = "256M"

    @Option(name: .long, help: "Boot a fresh snapshot (new address layout, AT_RANDOM, hash seeds, PRNG states) after this many requests (socket mode: connections) and swap it in without dropping any.")
    var refreshAfter: Int?

    @Option(name: .long, help: "Boot a fresh snapshot every this many seconds (as --refresh-after; whichever comes first).")
    var refreshEvery: Double?

    @Option(name: .long, help: "Least severe log lines written to stderr: trace, debug, info (one access line per request or connection, the guest's stderr), notice, warning, error or critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "Log lines as text (for people) or json (one object per line, for a log pipeline).")
    var logFormat: String = "text"

    @OptionGroup var options: ProgramOptions

    /// The HTTP limits of the options above.
    func httpLimits() throws -> HTTPLimits {
        var limits = HTTPLimits()
        limits.maximumConnections = maxConnections
        limits.headerTimeout = headerTimeout
        limits.idleTimeout = idleTimeout
        limits.bodyTimeout = bodyTimeout
        guard let body = OptionChecks.size(maxBody) else { throw ValidationError("--max-body takes a size such as 65536, 64K or 16M, not \(maxBody)") }
        guard let buffered = OptionChecks.size(maxBuffered) else { throw ValidationError("--max-buffered takes a size such as 256M, not \(maxBuffered)") }
        limits.maximumBody = body
        limits.maximumBufferedBytes = buffered
        if let problem = limits.problem { throw ValidationError("HTTP limits: \(problem)") }
        return limits
    }

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard LogFormat(rawValue: logFormat) != nil else { throw ValidationError("--log-format must be text or json") }
        try OptionChecks.timeout(timeout.value)
        guard (1...256).contains(workers) else { throw ValidationError("--workers must be between 1 and 256") }
        _ = try Self.address(listen)
        guard DirtyTracking(rawValue: dirtyTracking) != nil else {
            throw ValidationError("--dirty-tracking must be one of \(DirtyTracking.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let metrics { _ = try Self.address(metrics) }
        _ = try httpLimits()
        if let refreshAfter, refreshAfter < 1 { throw ValidationError("--refresh-after must be at least 1, not \(refreshAfter)") }
        if let refreshEvery, !(refreshEvery.isFinite && refreshEvery > 0) { throw ValidationError("--refresh-every must be a positive number of seconds") }
        if snapshot != nil && (refreshAfter != nil || refreshEvery != nil) {
            throw ValidationError("--refresh-after and --refresh-every boot the program again; a --snapshot file cannot be booted afresh")
        }
        guard options.program.isEmpty != (snapshot == nil) else {
            throw ValidationError(snapshot == nil ? "give the program after --" : "give either --snapshot or a program, not both")
        }
    }

    func run() async throws {
        // One log format for everything serve says from here on (swift-log, to stderr).
        LineLogHandler.bootstrap(format: LogFormat(rawValue: logFormat) ?? .text, level: Logger.Level(rawValue: logLevel) ?? .info)
        let log = Logger(label: "kvmsandbox.serve")
        let (host, port) = try Self.address(listen)
        // A busy port is found before a boot of up to a minute, in one plain line.
        if let problem = Self.listeningProblem(host: host, port: port) {
            log.critical("cannot listen on \(listen): \(problem)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        let snapshot: Snapshot
        let executable: String
        if let file = self.snapshot {
            let started = DispatchTime.now().uptimeNanoseconds
            let key = try options.snapshotKey()
            let loaded: Snapshot
            do { loaded = try Snapshot(contentsOf: file, key: key) } catch {
                log.critical("\(file): \(error)")
                throw ExitCode(ExitStatus.sandboxError)
            }
            snapshot = try options.narrowing(loaded)
            executable = snapshot.configuration.programPath ?? file
            log.notice(.init(stringLiteral: String(format: "loaded %@%@ in %.1f ms", file, key == nil ? "" : " (tag verified)",
                                                   Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6)))
        } else {
            snapshot = try options.boot { log.notice("\($0)") }
            executable = try options.configuration().executable
        }
        log.notice("policy: \(snapshot.policySummary)")
        // swift-metrics to Prometheus, before any counters exist.
        let registry = metrics.map { _ in PrometheusCollectorRegistry() }
        if let registry {
            var factory = PrometheusMetricsFactory(registry: registry)
            factory.defaultDurationHistogramBuckets = [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
                                                       .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                                       .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(10)]
            factory.defaultValueHistogramBuckets = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]
            MetricsSystem.bootstrap(factory)
            Gauge(label: "kvmsandbox_build_info", dimensions: [("version", kvmsandboxVersion)]).record(1)
        }
        let tracking = DirtyTracking(rawValue: dirtyTracking)
        let refresh = RefreshPolicy(afterRequests: refreshAfter, every: refreshEvery)
        let options = self.options
        var boot: (@Sendable () throws -> Snapshot)?
        if refresh.refreshes { boot = { @Sendable in try options.boot { log.notice("\($0)") } } }
        let counters: ServerCounters
        let serveForever: @Sendable (String, Int, @escaping @Sendable (Int) -> Void) async throws -> Void
        let mode: String
        if snapshot.waitsForConnections {
            let server = try SocketServer(snapshot: snapshot, workers: workers, connectionTimeout: timeout.value, resetsEachConnection: !noReset,
                                          tracking: tracking, refresh: refresh, boot: boot)
            serveForever = { try await server.serve(host: $0, port: $1, bound: $2) }
            counters = server.counters
            mode = "socket mode: a \(noReset ? "reused" : "reset") VM per connection"
        } else {
            guard !noReset else {
                log.critical("--no-reset is for servers (socket mode); \(executable) reads its request from stdin, and each request is one run of it to its exit")
                throw ExitCode(ExitStatus.sandboxError)
            }
            let limits = try httpLimits()
            let server = try FunctionServer(snapshot: snapshot, workers: workers, requestTimeout: timeout.value, tracking: tracking, limits: limits,
                                            refresh: refresh, boot: boot)
            let described = "HTTP limits: \(limits.maximumConnections) connections, \(limits.maximumBody) body bytes, "
                + "\(limits.maximumBufferedBytes) buffered bytes, timeouts: header \(limits.headerTimeout) s, body \(limits.bodyTimeout) s, idle \(limits.idleTimeout) s"
            log.notice("\(described)")
            serveForever = { try await server.serve(host: $0, port: $1, bound: $2) }
            counters = server.counters
            mode = "function mode: stdin -> stdout, a reset VM per request"
        }
        var services: [any Service] = []
        if let registry {
            let (metricsHost, metricsPort) = try Self.address(metrics ?? "")
            services.append(MetricsEndpoint(host: metricsHost, port: metricsPort, registry: registry, help: ServerCounters.metricHelp,
                                            readiness: { counters.readiness }) { bound in
                log.notice("metrics on http://\(metricsHost):\(bound)/metrics (also /healthz, /readyz)")
            })
        }
        services.append(ServingService(onGracefulShutdown: { counters.stopping() }) {
            try await serveForever(host, port) { bound in
                log.notice("serving \(executable) on \(host):\(bound) with \(workers) VM(s) (\(mode))")
            }
        })
        // SIGINT and SIGTERM: stop accepting, let the requests in flight finish, then exit.
        var lifecycle = Logger(label: "kvmsandbox.lifecycle")
        lifecycle.logLevel = .warning
        let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: lifecycle))
        do {
            try await group.run()
        } catch {
            log.notice("\(counters.summary)")
            log.critical("\(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        log.notice("\(counters.summary)")
        if let resident = Self.residentKiB() {
            log.notice(.init(stringLiteral: String(format: "resident memory %.1f MiB for %d VM(s) and the server (%.1f MiB per VM at most)",
                                                   Double(resident) / 1024, workers, Double(resident) / 1024 / Double(workers))))
        }
    }

    /// Why `host`:`port` cannot be listened on (in use, not an address of this machine), found
    /// by binding a throwaway socket there; nil when it can (or for port 0).
    static func listeningProblem(host: String, port: Int) -> String? {
        guard port != 0 else { return nil }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &address.sin_addr) == 1 else { return nil }  // names: NIO resolves
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard probe >= 0 else { return nil }
        defer { close(probe) }
        var one: Int32 = 1
        setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound != 0 else { return nil }
        let error = errno
        return error == EADDRINUSE ? "the address is already in use" : String(cString: strerror(error))
    }

    /// This process's resident memory (VmRSS), in KiB.
    static func residentKiB() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
        return line.split(separator: " ").compactMap { Int($0) }.first
    }

    /// HOST and PORT of a HOST:PORT option.
    static func address(_ text: String) throws -> (String, Int) {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]), (0...65535).contains(port) else {
            throw ValidationError("give HOST:PORT, not \(text)")
        }
        return (String(parts[0]), port)
    }
}
