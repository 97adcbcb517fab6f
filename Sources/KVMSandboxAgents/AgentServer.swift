import Foundation
import KVMSandboxServer
import Logging
import MCP
import NIOHTTP1
import Synchronization

/// `kvmsandbox mcp`: the Model Context Protocol server over stdio (what a desktop agent spawns)
/// or streamable HTTP (stateless: each POST is answered with one JSON response), with the
/// session tools of `AgentTools`.
public struct AgentServer: Sendable {
    /// The sessions the tools run in.
    public let manager: SessionManager
    /// Log lines go here (never to stdout: over stdio, stdout is the protocol).
    public let logger: Logger
    /// The name and version the server reports to clients.
    public static let name = "kvmsandbox"

    /// A server of `manager`'s sessions.
    public init(manager: SessionManager, logger: Logger = Logger(label: "kvmsandbox.mcp")) {
        self.manager = manager
        self.logger = logger
    }

    /// An MCP server with the tools registered, not yet started.
    func makeServer() async -> Server {
        let server = Server(name: Self.name, version: "0.1",
                            instructions: "Run Python and shell commands in isolated, stateful micro-VM sessions (tools run_python, run_command, files).",
                            capabilities: .init(tools: .init(listChanged: false)))
        let tools = AgentTools.tools(manager.configuration)
        let manager = self.manager, inFlight = self.inFlight
        await server.withMethodHandler(ListTools.self) { _ in ListTools.Result(tools: tools) }
        await server.withMethodHandler(CallTool.self) { parameters in
            inFlight.withLock { $0 += 1 }
            defer { inFlight.withLock { $0 -= 1 } }
            return await AgentTools.call(parameters.name, arguments: parameters.arguments ?? [:], manager: manager)
        }
        return server
    }

    /// Tool calls being answered now.
    private let inFlight = Counter()

    /// A count shared by the handlers of every MCP server this one makes.
    final class Counter: Sendable {
        private let value = Mutex(0)
        func withLock<R>(_ body: (inout Int) -> R) -> R { value.withLock { body(&$0) } }
    }

    /// Waits until no tool call is being answered (at most `limit`): a client that closes its
    /// end right after sending still gets the answers to what it sent.
    func drain(limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        // (A request read just before the end of file may not have reached its handler yet.)
        try? await Task.sleep(for: .milliseconds(50))
        while inFlight.withLock({ $0 }) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Serves one client over this process's stdin and stdout until it closes them.
    public func serveStandardStreams() async throws {
        let server = await makeServer()
        try await server.start(transport: LineTransport(logger: logger))
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await manager.reapIdleSessions() }
            await server.waitUntilCompleted()
            await drain(limit: manager.configuration.cellTimeout + .seconds(5))
            group.cancelAll()
        }
        await server.stop()
        await manager.closeAll()
    }

    /// Serves MCP's streamable HTTP transport at `http://host:port/mcp` (stateless: each POST
    /// gets one JSON response; sessions are the tools' own, named in their arguments) until the
    /// task is cancelled. `bound` gets the port (0: any free one). With a `token`, a request
    /// must carry `Authorization: Bearer TOKEN` (else 401): whoever reaches the port runs code.
    public func serveHTTP(host: String, port: Int, limits: HTTPLimits = .init(), token: String? = nil,
                          bound: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let logger = self.logger
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await manager.reapIdleSessions() }
            group.addTask {
                try await HTTPListener.run(host: host, port: port, limits: limits, logger: logger, bound: bound) { head, body in
                    if let token, !Self.authorized(head.headers.first(name: "Authorization"), token: token) {
                        return HTTPListener.Response(status: 401, contentType: "text/plain; charset=utf-8",
                                                     body: Array("this server needs Authorization: Bearer <token>\n".utf8),
                                                     headers: [("WWW-Authenticate", "Bearer")])
                    }
                    return try await self.answer(head, body: body)
                }
            }
            defer { group.cancelAll() }
            try await group.next()
        }
        await manager.closeAll()
    }

    /// Whether `header` is `Bearer TOKEN`, compared in time that does not depend on where the
    /// first difference is.
    static func authorized(_ header: String?, token: String) -> Bool {
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let offered = Array(header.utf8.dropFirst(7)), expected = Array(token.utf8)
        var difference = UInt8(offered.count == expected.count ? 0 : 1)
        for index in 0..<expected.count { difference |= expected[index] ^ (index < offered.count ? offered[index] : 0) }
        return difference == 0
    }

    /// One HTTP request: a fresh MCP server and stateless transport answer it (an MCP server
    /// accepts `initialize` once, and every client initializes).
    func answer(_ head: HTTPRequestHead, body: [UInt8]) async throws -> HTTPListener.Response {
        let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
        guard path == "/mcp" || path == "/mcp/" else {
            return HTTPListener.Response(status: 404, contentType: "text/plain; charset=utf-8", body: Array("the MCP endpoint is /mcp\n".utf8))
        }
        var headers: [String: String] = [:]
        for (name, value) in head.headers { headers[name] = value }
        let request = HTTPRequest(method: head.method.rawValue, headers: headers, body: body.isEmpty ? nil : Data(body), path: path)
        let server = await makeServer()
        let transport = StatelessHTTPServerTransport(validationPipeline: StandardValidationPipeline(validators: [
            AcceptHeaderValidator(mode: .jsonOnly), ContentTypeValidator(), ProtocolVersionValidator(),
        ]), logger: logger)
        try await server.start(transport: transport)
        let response = await transport.handleRequest(request)
        await server.stop()
        var extra: [(String, String)] = []
        var contentType = "application/json"
        for (name, value) in response.headers {
            if name.lowercased() == "content-type" { contentType = value } else { extra.append((name, value)) }
        }
        return HTTPListener.Response(status: response.statusCode, contentType: contentType, body: Array(response.bodyData ?? Data()), headers: extra)
    }
}
