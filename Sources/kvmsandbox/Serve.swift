import ArgumentParser
import Dispatch
import Foundation
import KVMSandbox
import KVMSandboxServer

/// `kvmsandbox serve`: an unmodified filter program as an HTTP service with a pristine VM per
/// request (function mode): initialised once up to its first read of stdin, snapshotted, and
/// each request served by a reset fork with the request body as stdin and stdout as the answer.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve HTTP requests with a program, each in a reset fork of its ready-point snapshot.",
        discussion: """
        The program initialises (imports, loads its data) until it first reads standard input; \
        that is the ready point, where it is snapshotted. Each request (any method, any path) \
        runs in a fork with the request body as stdin; the response is its stdout with status \
        200 when it exits 0, 504 past --timeout, 500 otherwise (stderr and the report are \
        logged, never sent). Example:
          kvmsandbox serve --listen 127.0.0.1:8080 --ro handlers -- /usr/bin/python3 handlers/app.py
        """)

    @Option(name: .long, help: "HOST:PORT to listen on (port 0: any free one, printed at start).")
    var listen: String = "127.0.0.1:8080"

    @Option(name: .long, help: "VMs serving requests at once.")
    var workers: Int = 2

    @Option(name: .long, help: "Guest memory in MiB, per VM.")
    var memory: UInt64 = 256

    @Option(name: .long, help: "Wall-clock limit of each request, in seconds (then 504).")
    var timeout: Double = 10

    @Option(name: .long, help: "Wall-clock limit of the start-up to the ready point, in seconds.")
    var bootTimeout: Double = 60

    @Flag(name: .long, help: "Socket mode: serve connection after connection in the same VM (no reset between them), for comparison.")
    var noReset = false

    @OptionGroup var files: FileOptions

    @Option(name: .customLong("env"), help: "NAME=value for the program's environment (repeatable).")
    var environment: [String] = []

    @Argument(parsing: .captureForPassthrough, help: "-- PROGRAM ARGUMENTS...")
    var command: [String] = []

    func validate() throws {
        _ = try OptionChecks.mebibytes(memory, option: "--memory")
        try OptionChecks.timeout(timeout)
        try OptionChecks.timeout(bootTimeout)
        guard (1...256).contains(workers) else { throw ValidationError("--workers must be between 1 and 256") }
        guard listen.split(separator: ":").count == 2, Int(listen.split(separator: ":")[1]) != nil else {
            throw ValidationError("--listen takes HOST:PORT, not \(listen)")
        }
        guard !program.isEmpty else { throw ValidationError("give the program after --") }
    }

    private var program: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

    func run() throws {
        let parts = listen.split(separator: ":")
        let (host, port) = (String(parts[0]), Int(parts[1]) ?? 8080)
        let executable = Run.resolve(program[0])
        var configuration = SandboxConfiguration()
        configuration.memorySize = try OptionChecks.mebibytes(memory, option: "--memory")
        configuration.timeout = bootTimeout
        configuration.files = try files.grants()
        configuration.memoryDirectories = files.tmpfs
        configuration.environment = environment
        configuration.programPath = executable
        configuration.arguments = [program[0].contains("/") ? program[0] : executable] + program.dropFirst()
        configuration.acceptsConnections = true
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        let snapshot: Snapshot
        do {
            snapshot = try Snapshot(elfPath: executable, configuration: configuration, readyAt: .firstWait)
        } catch {
            printError("kvmsandbox: \(executable) did not reach its ready point (its first read of stdin, or a wait for a connection): \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        let counters: ServerCounters
        let serveForever: @Sendable (String, Int, @escaping @Sendable (Int) -> Void) async throws -> Void
        let mode: String
        if snapshot.waitsForConnections {
            let server = try SocketServer(snapshot: snapshot, workers: workers, connectionTimeout: timeout, resetsEachConnection: !noReset)
            serveForever = { try await server.serve(host: $0, port: $1, bound: $2) }
            counters = server.counters
            mode = "socket mode: a \(noReset ? "reused" : "reset") VM per connection"
        } else {
            guard !noReset else {
                printError("kvmsandbox: --no-reset is for servers (socket mode); \(executable) reads its request from stdin, and each request is one run of it to its exit")
                throw ExitCode(ExitStatus.sandboxError)
            }
            let server = try FunctionServer(snapshot: snapshot, workers: workers, requestTimeout: timeout)
            serveForever = { try await server.serve(host: $0, port: $1, bound: $2) }
            counters = server.counters
            mode = "function mode: stdin -> stdout, a reset VM per request"
        }
        let finished = DispatchSemaphore(value: 0)
        let failure = FailureBox()
        let serving = Task {
            do {
                try await serveForever(host, port) { bound in
                    printError("kvmsandbox: serving \(executable) on \(host):\(bound) with \(workers) VM(s) (\(mode))")
                }
            } catch is CancellationError {
            } catch {
                failure.set(error)
            }
            finished.signal()
        }
        // SIGINT and SIGTERM stop accepting and end the serving task; requests in flight finish.
        let signals = [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                printError("kvmsandbox: serve: stopping (signal \(number))")
                serving.cancel()
            }
            source.resume()
            return source
        }
        finished.wait()
        signals.forEach { $0.cancel() }
        printError("kvmsandbox: serve: \(counters.summary)")
        if let error = failure.error {
            printError("kvmsandbox: serve: \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
    }
}

/// An error handed from the serving task to the waiting command.
final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Error?
    var error: Error? { lock.withLock { stored } }
    func set(_ error: Error) { lock.withLock { stored = error } }
}
