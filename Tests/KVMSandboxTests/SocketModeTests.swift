import Foundation
import KVMSandbox
import KVMSandboxTools
import KVMSandboxServer
import Metrics
import Prometheus
import Testing

/// Servers for socket mode, built by the tests, and a raw HTTP client.
enum SocketPrograms {
    /// Python's `http.server.HTTPServer`, single-threaded: says how many requests this process
    /// served and whether a file an earlier request wrote to the tmpfs is there; `/crash` crashes.
    static let python = """
    import http.server, os, ctypes
    count = 0
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            global count
            count += 1
            if self.path == "/crash":
                ctypes.string_at(0)
            seen = os.path.exists("/state/left-behind")
            open("/state/left-behind", "w").write(self.path)
            body = f"{self.path} count={count} seen={seen}\\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *arguments):
            pass
    http.server.HTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
    """

    /// A TCP listener on 127.0.0.1 at a free port (backlog 4), and the port; nil on failure.
    static func localListener() -> (fd: Int32, port: Int)? {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var size = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, size) == 0 && getsockname(listener, $0, &size) == 0 }
        }
        guard bound, listen(listener, 4) == 0 else { close(listener); return nil }
        return (listener, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// `Tests/Guests/rust/httpserver.rs` built with rustc (an ordinary dynamic program).
    static func rust() throws -> String {
        let output = Guests.outputDirectory.appendingPathComponent("rust-httpserver").path
        if !FileManager.default.fileExists(atPath: output) {
            let source = Guests.testsDirectory.deletingLastPathComponent().appendingPathComponent("Guests/rust/httpserver.rs").path
            let status = GuestToolchain.spawn(["rustc", "-O", "--edition", "2021", "-o", output, source], discardingOutput: true)
            try #require(status == 0, "rustc failed with status \(status)")
        }
        return output
    }

    /// A configuration for socket mode: output captured, a tmpfs at /state.
    static func configuration(_ arguments: [String], grants: [FileGrant] = []) -> SandboxConfiguration {
        var configuration = SandboxConfiguration()
        configuration.arguments = arguments
        configuration.files = grants
        configuration.memoryDirectories = ["/state"]
        configuration.memorySize = 256 << 20
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        configuration.acceptsConnections = true
        configuration.timeout = 60
        return configuration
    }

    /// `server` serving on a free port while `body` runs; stopped afterwards.
    static func serving<R>(_ server: SocketServer, _ body: (Int) async throws -> R) async throws -> R {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let task = Task { try await server.serve(host: "127.0.0.1", port: 0) { continuation.yield($0) } }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw SandboxError.invalidConfiguration("server did not start") }
        defer { task.cancel() }
        let result = try await body(port)
        task.cancel()
        try await task.value
        return result
    }

    /// One HTTP/1.0 GET on a new connection; the response body ("" when the server closed the
    /// connection without an answer, "error: ..." when the connection failed).
    static func get(port: Int, path: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return "error: socket" }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port)).bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return "error: connect \(errno)" }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: test\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return "error: send \(errno)" }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += buffer[..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { return "" }
        return String(text[split.upperBound...])
    }

    /// `count` GETs from 8 concurrent clients; each answer must be `expected(path)`.
    static func hammer(port: Int, count: Int, expected: @escaping @Sendable (String) -> String) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for client in 0..<8 {
                group.addTask {
                    for index in stride(from: client, to: count, by: 8) {
                        let path = "/r\(index)"
                        let body = get(port: port, path: path)
                        #expect(body == expected(path))
                    }
                }
            }
            try await group.waitForAll()
        }
    }
}

extension KVMTests {
    /// Socket mode (kvmserver's model): an unmodified server snapshotted where it waits for a
    /// connection; each connection served by a fork that is reset afterwards.
    @Suite struct SocketMode {
        /// Every socket call on a connection handed over as a socketpair end, with hostile
        /// arguments: EFAULT before anything is consumed, EACCES for other kinds of sockets and
        /// for connect, EADDRINUSE for a second listener.
        @Test func socketCallsOnAnOfferedConnection() throws {
            let path = try Guests.build("sockets")
            var configuration = SocketPrograms.configuration([path])
            configuration.timeout = 10
            let sandbox = try Sandbox(elfPath: path, configuration: configuration)
            var pair: [Int32] = [0, 0]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
            defer { close(pair[1]) }
            #expect(write(pair[1], "pingxyz", 7) == 7)
            sandbox.offerConnection(pair[0])
            let outcome = try sandbox.run()
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self) == "ok\n")
            #expect(outcome == .exited(status: 0))
            var buffer = [UInt8](repeating: 0, count: 16)
            let n = read(pair[1], &buffer, 16)
            #expect(String(decoding: buffer.prefix(max(0, n)), as: UTF8.self) == "pongabc")
            #expect(read(pair[1], &buffer, 16) == 0)  // the guest shut it down and closed it
        }

        /// Without socket mode there is no network at all.
        @Test func socketsAreRefusedOutsideSocketMode() throws {
            let (outcome, stdout, stderr) = try DynamicPrograms.run(
                "/usr/bin/python3", ["-c", "import socket\ntry:\n    socket.socket()\nexcept PermissionError as e:\n    print('refused', e.errno)"])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "refused 13\n")
        }

        /// A guest's SO_LINGER never makes the host wait: python sets a 30 s linger on a
        /// connection whose peer never reads, fills it and exits; the run ends at once (the
        /// host's close of a lingering socket once blocked for l_linger seconds, past the deadline).
        @Test func aGuestLingerDoesNotHoldTheHost() throws {
            // The kernel completes the handshake; nobody reads.
            let (listener, port) = try #require(SocketPrograms.localListener())
            defer { close(listener) }
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", "-c", """
                import socket, struct
                s = socket.create_connection(("127.0.0.1", \(port)))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
                s.setblocking(False)
                sent = 0
                try:
                    while True: sent += s.send(b"x" * 65536)
                except BlockingIOError:
                    pass
                print("full", sent > 0)
                s.close()
                """]
            configuration.allowedConnections = ["127.0.0.1:\(port)"]
            configuration.memorySize = 128 << 20
            configuration.standardOutput = .capture
            configuration.standardError = .capture
            configuration.timeout = 20
            let started = Date()
            let sandbox = try Sandbox(elfPath: "/usr/bin/python3", configuration: configuration)
            let outcome = try sandbox.run()
            #expect(outcome == .exited(status: 0), "\(String(decoding: sandbox.capturedOutput(fd: 2), as: UTF8.self))")
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self) == "full True\n")
            #expect(Date().timeIntervalSince(started) < 15)
        }

        /// Outgoing connections reach only the allowed destinations: python connects to a host
        /// echo listener it was allowed, and gets EACCES for another port and for a UDP socket.
        @Test func connectReachesOnlyAllowedDestinations() throws {
            let (listener, port) = try #require(SocketPrograms.localListener())
            defer { close(listener) }
            // The echo side: one connection, its bytes back in upper case.
            let echo = Thread {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { return }
                var buffer = [UInt8](repeating: 0, count: 64)
                let n = read(connection, &buffer, 64)
                if n > 0 { _ = write(connection, Array(String(decoding: buffer[..<n], as: UTF8.self).uppercased().utf8), n) }
                close(connection)
            }
            echo.start()
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", "-c", """
                import socket
                s = socket.create_connection(("127.0.0.1", \(port)))
                s.sendall(b"hello")
                print(s.recv(64).decode())
                for family, kind, port in ((socket.AF_INET, socket.SOCK_STREAM, \(port == 65535 ? port - 1 : port + 1)), (socket.AF_INET, socket.SOCK_DGRAM, 53)):
                    try:
                        socket.socket(family, kind).connect(("127.0.0.1", port))
                    except PermissionError as e:
                        print("refused", e.errno)
                """]
            configuration.allowedConnections = ["127.0.0.1:\(port)"]
            configuration.memorySize = 128 << 20
            configuration.standardOutput = .capture
            configuration.standardError = .capture
            configuration.timeout = 20
            let sandbox = try Sandbox(elfPath: "/usr/bin/python3", configuration: configuration)
            let outcome = try sandbox.run()
            #expect(outcome == .exited(status: 0), "\(String(decoding: sandbox.capturedOutput(fd: 2), as: UTF8.self))")
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self) == "HELLO\nrefused 13\nrefused 13\n")
        }

        /// Python's http.server: 1,000 requests from 8 clients, each in a pristine fork (its
        /// count is 1 and the file the last one wrote is gone); a crash ends only its connection.
        @Test func pythonHTTPServerServesAThousandIsolatedConnections() async throws {
            let code = LinuxFixtures.scratch("socket-python")
            try Data(SocketPrograms.python.utf8).write(to: URL(fileURLWithPath: code + "/server.py"))
            let configuration = SocketPrograms.configuration(["/usr/bin/python3", code + "/server.py"], grants: [FileGrant(hostPath: code)])
            let snapshot = try Snapshot(elfPath: "/usr/bin/python3", configuration: configuration, readyAt: .firstWait)
            #expect(snapshot.waitsForConnections)
            let server = try SocketServer(snapshot: snapshot, workers: 2, connectionTimeout: 10)
            try await SocketPrograms.serving(server) { port in
                try await SocketPrograms.hammer(port: port, count: 1000) { "\($0) count=1 seen=False\n" }
                #expect(SocketPrograms.get(port: port, path: "/crash") == "")
                #expect(SocketPrograms.get(port: port, path: "/after") == "/after count=1 seen=False\n")
            }
            let totals = server.counters.snapshot
            #expect(totals.requests == 1002)
            #expect(totals.failures == 1)
        }

        /// A Rust std::net server built here: 1,000 isolated connections; `--no-reset` reuses the
        /// VM (the count goes up), yet a crash still gets a pristine one.
        @Test func rustServerServesAThousandIsolatedConnections() async throws {
            let path = try SocketPrograms.rust()
            let snapshot = try Snapshot(elfPath: path, configuration: SocketPrograms.configuration([path]), readyAt: .connectionWait)
            let server = try SocketServer(snapshot: snapshot, workers: 2, connectionTimeout: 10)
            try await SocketPrograms.serving(server) { port in
                try await SocketPrograms.hammer(port: port, count: 1000) { "\($0) count=1\n" }
            }
            let reused = try SocketServer(snapshot: snapshot, workers: 1, connectionTimeout: 10, resetsEachConnection: false)
            try await SocketPrograms.serving(reused) { port in
                #expect(SocketPrograms.get(port: port, path: "/a") == "/a count=1\n")
                #expect(SocketPrograms.get(port: port, path: "/b") == "/b count=2\n")
                #expect(SocketPrograms.get(port: port, path: "/crash") == "")
                #expect(SocketPrograms.get(port: port, path: "/c") == "/c count=1\n")
            }
        }

        /// Go's net/http (threads, epoll, non-blocking sockets): isolated connections, and two
        /// requests on one kept-alive connection are served by the same fork.
        @Test func goServerServesIsolatedConnections() async throws {
            let path = try ThreadPrograms.go("httpserver")
            let snapshot = try Snapshot(elfPath: path, configuration: SocketPrograms.configuration([path]), readyAt: .firstWait)
            #expect(snapshot.waitsForConnections)
            let server = try SocketServer(snapshot: snapshot, workers: 2, connectionTimeout: 10)
            try await SocketPrograms.serving(server) { port in
                try await SocketPrograms.hammer(port: port, count: 200) { "\($0) count=1\n" }
            }
        }
    
        /// The process's Prometheus registry, swift-metrics bootstrapped into it once.
        static let registry: PrometheusCollectorRegistry = {
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            return registry
        }()

        /// `/metrics` in Prometheus's text format counts the connections by outcome and reports
        /// their latency, reset time, dirty pages and exits, the VMs and those in flight, with
        /// `# HELP` lines; `/healthz` and `/readyz` answer; other paths are 404.
        @Test func metricsEndpointReportsRequests() async throws {
            let registry = Self.registry
            let path = try SocketPrograms.rust()
            let snapshot = try Snapshot(elfPath: path, configuration: SocketPrograms.configuration([path]), readyAt: .connectionWait)
            let server = try SocketServer(snapshot: snapshot, workers: 1, connectionTimeout: 10)
            try await SocketPrograms.serving(server) { port in
                for index in 0..<3 { #expect(SocketPrograms.get(port: port, path: "/m\(index)") == "/m\(index) count=1\n") }
                #expect(SocketPrograms.get(port: port, path: "/crash") == "")
            }
            let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
            let counters = server.counters
            let endpoint = Task {
                try await MetricsEndpoint(host: "127.0.0.1", port: 0, registry: registry, help: ServerCounters.metricHelp,
                                          readiness: { counters.readiness }) { continuation.yield($0) }.run()
            }
            defer { endpoint.cancel() }
            var iterator = ports.makeAsyncIterator()
            let port = try #require(await iterator.next())
            let text = SocketPrograms.get(port: port, path: "/metrics")
            let ok = text.split(separator: "\n").first { $0.hasPrefix("kvmsandbox_connections_total{outcome=\"ok\"}") }
            #expect((ok?.split(separator: " ").last).flatMap { Double($0) } ?? 0 >= 3, "\(text)")
            #expect(text.contains("kvmsandbox_connections_total{outcome=\"fault\"}"))
            for name in ["kvmsandbox_connection_duration_seconds_count", "kvmsandbox_reset_duration_seconds_count",
                         "kvmsandbox_connection_dirty_pages_count", "kvmsandbox_connection_vm_exits_count", "kvmsandbox_vms",
                         "kvmsandbox_connections_in_flight 0", "# HELP kvmsandbox_connections_total Connections served"] {
                #expect(text.contains(name), "\(name) missing")
            }
            #expect(SocketPrograms.get(port: port, path: "/healthz") == "ok\n")
            #expect(SocketPrograms.get(port: port, path: "/readyz") == "ready: 1 of 1 VM(s) free\n")
            counters.stopping()
            #expect(SocketPrograms.get(port: port, path: "/readyz") == "shutting down\n")
            #expect(SocketPrograms.get(port: port, path: "/other") == "here: /metrics, /healthz, /readyz\n")
        }
    }
}
