import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxAgents
import KVMSandboxServer
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `kvmsandbox mcp`: code execution for AI agents over the Model Context Protocol: stateful
/// Python sessions and shell commands, each session a micro-VM forked from a warm snapshot.
struct MCPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp",
        abstract: "Serve stateful Python sessions and commands in micro-VMs to AI agents (Model Context Protocol).",
        discussion: """
        Tools: run_python, run_command, write_file, read_file, list_files, reset_session, close_session. \
        Each session is a micro-VM forked from a warm snapshot of a Python driver (booted once): its \
        variables, imports and files (an in-memory workspace, /workspace) persist between calls and no \
        session sees another's. Without --listen the server speaks MCP over stdin and stdout (what a desktop \
        agent spawns); with it, streamable HTTP at http://HOST:PORT/mcp. Logs go to stderr. Examples:
          kvmsandbox mcp
          kvmsandbox mcp --listen 127.0.0.1:8765 --max-sessions 32 --timeout 60s
          kvmsandbox mcp --python-path /srv/wheels --preload numpy,pandas
        """)

    @Option(name: .long, help: "HOST:PORT to serve streamable HTTP on (the endpoint is /mcp); without it, stdio.")
    var listen: String?

    @Option(name: .long, help: "With --listen: a file holding a token (16 to 4096 bytes, surrounding whitespace ignored) every HTTP request must carry as `Authorization: Bearer TOKEN`. Whoever reaches the port can run code: listening beyond loopback needs one.")
    var tokenFile: String?

    @Option(name: .long, parsing: .unconditional, help: "Wall-clock limit of each cell or command, in seconds or with a unit (default 30s): then KeyboardInterrupt (the session keeps its state); a cell that ignores it is ended and its session restarts empty.")
    var timeout: Seconds = 30

    @Option(name: .long, help: "Sessions open at once (default 16).")
    var maxSessions: Int = 16

    @Option(name: .long, help: "Sessions forked and warmed up ahead of need (default 2), so a new session's first cell is as fast as a warm one.")
    var spareSessions: Int = 2

    @Option(name: .long, parsing: .unconditional, help: "Close a session unused for this long (default 10m).")
    var sessionIdle: Seconds = 600

    @Option(name: .long, help: "Guest memory per session in MiB or with a unit (default 1G), committed as the session touches it.")
    var memory: Mebibytes?

    @Option(name: .long, help: "Characters of output a reply carries at most (default 65536); more is cut with a marker.")
    var maxOutput: Int = 64 << 10

    @Option(name: .long, help: "A host directory of Python packages added to sys.path, read-only (repeatable), e.g. one made by `pip install --target DIR numpy`.")
    var pythonPath: [String] = []

    @Option(name: .long, help: "Modules the warm snapshot imports, comma-separated (e.g. numpy,pandas,matplotlib), so sessions start with them loaded.")
    var preload: String = ""

    @Flag(name: .customLong("no-matplotlib"), help: "Do not import matplotlib into the warm snapshot (it is, when installed: a session's first plot then takes milliseconds, not the seconds of building its font cache).")
    var noMatplotlib = false

    @Option(name: .long, help: "The Python interpreter on the host (it runs inside the VMs).")
    var python: String = "/usr/bin/python3"

    @OptionGroup var files: FileOptions

    @Option(name: .customLong("env"), help: "NAME=value for the sessions' environment (repeatable).")
    var environment: [String] = []

    @Option(name: .customLong("allow-connect"), help: "IPv4:PORT sessions may connect to (repeatable); every other connect is EACCES.")
    var allowConnect: [String] = []

    @Flag(name: .customLong("no-system-view"), help: "Do not show the default read-only system view: only the grants (the interpreter's files must then be granted).")
    var noSystemView = false

    @Option(name: .long, help: "HOST:PORT for a Prometheus /metrics endpoint (sessions, tool calls by operation and outcome, durations, exits; also /healthz, /readyz).")
    var metrics: String?

    @Option(name: .long, help: "Least severe log lines written to stderr: trace, debug, info (one line per tool call), notice, warning, error or critical.")
    var logLevel: String = "notice"

    func validate() throws {
        try OptionChecks.timeout(timeout.value)
        try OptionChecks.timeout(sessionIdle.value)
        guard (1...4096).contains(maxSessions) else { throw ValidationError("--max-sessions must be between 1 and 4096") }
        guard (256...(16 << 20)).contains(maxOutput) else { throw ValidationError("--max-output must be between 256 and 16777216 characters") }
        _ = try OptionChecks.mebibytes(memory?.count ?? 1024, option: "--memory")
        if let listen {
            let (host, _) = try Serve.address(listen)
            if tokenFile == nil && !["127.0.0.1", "localhost", "::1"].contains(host) {
                throw ValidationError("--listen \(listen) reaches beyond this machine: anyone who can connect could run code; give --token-file (or listen on 127.0.0.1)")
            }
        } else if tokenFile != nil {
            throw ValidationError("--token-file is for --listen (stdio has no clients but its parent)")
        }
        if let metrics { _ = try Serve.address(metrics) }
        for destination in allowConnect where LinuxDestination.parse(destination) == nil {
            throw ValidationError("--allow-connect takes IPv4:PORT (e.g. 127.0.0.1:5432), not \(destination)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let problem = try agentConfiguration().problem { throw ValidationError(problem) }
    }

    /// The sessions' configuration from the options.
    func agentConfiguration() throws -> AgentConfiguration {
        var configuration = AgentConfiguration()
        configuration.sandbox.memorySize = try OptionChecks.mebibytes(memory?.count ?? 1024, option: "--memory")
        configuration.sandbox.files = try files.grants()
        configuration.sandbox.memoryDirectories = files.memoryDirectories(grants: configuration.sandbox.files)
        configuration.sandbox.environment = Run.environment(environment)
        configuration.sandbox.allowedConnections = allowConnect
        configuration.sandbox.systemView = !noSystemView
        configuration.sandbox.timeout = 120  // the driver's boot
        configuration.cellTimeout = .milliseconds(Int64((timeout.value * 1000).rounded()))
        configuration.sessionIdle = .milliseconds(Int64((sessionIdle.value * 1000).rounded()))
        configuration.maximumSessions = maxSessions
        configuration.preloadsMatplotlib = !noMatplotlib
        configuration.spareSessions = spareSessions
        configuration.outputLimit = maxOutput
        configuration.pythonPath = pythonPath.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 }
        configuration.preload = preload.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return configuration
    }

    func run() async throws {
        LineLogHandler.bootstrap(format: .text, level: Logger.Level(rawValue: logLevel) ?? .notice)
        let log = Logger(label: "kvmsandbox.mcp")
        var configuration = try agentConfiguration()
        do { configuration.python = try Program.lookup(python, searchPath: ProcessInfo.processInfo.environment["PATH"]).executable } catch {
            log.critical("\(python): \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        // swift-metrics to Prometheus, before the session manager makes its counters.
        let registry = metrics.map { _ in PrometheusCollectorRegistry() }
        if let registry { MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry)) }
        let manager: SessionManager
        do {
            manager = try SessionManager(configuration: configuration, logger: log)
            // Boot the warm snapshot now: the first session then opens in a millisecond, and a
            // driver that cannot start is a clear error at once, not in the agent's first call.
            try await manager.boot()
        } catch {
            log.critical("\(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        let server = AgentServer(manager: manager, logger: log)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let registry {
            let (metricsHost, metricsPort) = try Serve.address(metrics ?? "")
            services.append(.init(service: MetricsEndpoint(host: metricsHost, port: metricsPort, registry: registry, help: SessionManager.metricHelp, bound: { bound in
                log.notice("metrics on http://\(metricsHost):\(bound)/metrics (also /healthz, /readyz)")
            })))
        }
        if let listen {
            let (host, port) = try Serve.address(listen)
            var token: String?
            if let tokenFile {
                guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                    log.critical("--token-file \(tokenFile): cannot read it")
                    throw ExitCode(ExitStatus.sandboxError)
                }
                let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
                guard (16...4096).contains(trimmed.utf8.count), !trimmed.contains(where: \.isWhitespace) else {
                    log.critical("--token-file \(tokenFile): the token must be 16 to 4096 characters without spaces")
                    throw ExitCode(ExitStatus.sandboxError)
                }
                token = trimmed
            }
            let bearer = token
            if let problem = Serve.listeningProblem(host: host, port: port) {
                log.critical("cannot listen on \(listen): \(problem)")
                throw ExitCode(ExitStatus.sandboxError)
            }
            services.append(.init(service: ServingService {
                try await server.serveHTTP(host: host, port: port, token: bearer) { bound in
                    log.notice("MCP over streamable HTTP at http://\(host):\(bound)/mcp")
                }
            }))
        } else {
            log.notice("MCP over stdio: \(configuration.python) sessions, at most \(configuration.maximumSessions), \(timeout.value) s per call")
            // The client closing stdin ends the server (and the metrics endpoint with it).
            services.append(.init(service: ServingService { try await server.serveStandardStreams() },
                                  successTerminationBehavior: .gracefullyShutdownGroup))
        }
        var lifecycle = Logger(label: "kvmsandbox.lifecycle")
        lifecycle.logLevel = .warning
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: lifecycle))
        try await group.run()
        let counters = await manager.counters
        log.notice("sessions opened \(counters.opened), requests \(counters.requests), timeouts \(counters.timeouts), restarts \(counters.restarts)")
    }
}
