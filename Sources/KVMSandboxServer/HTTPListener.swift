import KVMSandbox
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server on SwiftNIO: each request's head and whole body go to a responder,
/// whose answer is sent with a Content-Length. Function mode and the metrics endpoint use it.
package enum HTTPListener {
    /// What a responder answers.
    package struct Response: Sendable {
        package var status: Int
        package var contentType: String
        package var body: [UInt8]
        /// More header fields (`X-Request-Id`, `X-KVMSandbox-Reason`).
        package var headers: [(String, String)] = []

        /// A response of `status` with `body` of `contentType` and more header fields.
        package init(status: Int, contentType: String, body: [UInt8], headers: [(String, String)] = []) {
            self.status = status
            self.contentType = contentType
            self.body = body
            self.headers = headers
        }
    }

    /// Listens on `host`:`port` (0: any free port, reported to `bound`) until the task is
    /// cancelled, answering every request with `respond` (requests on one connection in order),
    /// within `limits`: connections past the limit wait in the kernel's backlog, slow clients are
    /// closed, bodies past the limit get 413, and buffered bodies share one ceiling.
    package static func run(host: String, port: Int, limits: HTTPLimits, logger: Logger, bound: @Sendable (Int) -> Void,
                    respond: @escaping @Sendable (HTTPRequestHead, [UInt8]) async throws -> Response) async throws {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port, serverBackPressureStrategy: .init(lowWatermark: 1, highWatermark: 2)) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(HTTPDeadlineHandler(limits: limits))
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
                }
            }
        let actual = channel.channel.localAddress?.port ?? port
        bound(actual)
        logger.debug("listening on \(host):\(actual)")
        let connections = Allowance(limits.maximumConnections)
        let buffered = Allowance(limits.maximumBufferedBytes)
        let open = OpenConnections()
        // Cancellation (a graceful shutdown) stops accepting and closes idle connections; a
        // request being answered is not cancelled: its connection's task runs apart (an
        // unstructured task the group awaits), answers, then closes.
        try await withThrowingDiscardingTaskGroup { group in
            try await withTaskCancellationHandler {
                try await channel.executeThenClose { accepted in
                    for try await connection in accepted {
                        // At the limit, stop taking connections: NIO then stops accepting.
                        guard await connections.acquire(1) else {
                            try? await connection.channel.close()
                            break
                        }
                        group.addTask {
                            defer { connections.release(1) }
                            await Task {
                                await serve(connection, limits: limits, buffered: buffered, open: open, logger: logger, respond: respond)
                            }.value
                        }
                    }
                }
            } onCancel: {
                open.shutDown()
            }
        }
    }

    /// Answers the requests of one connection, in order.
    private static func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, limits: HTTPLimits,
                              buffered: Allowance, open: OpenConnections, logger: Logger,
                              respond: @Sendable (HTTPRequestHead, [UInt8]) async throws -> Response) async {
        var held = 0  // bytes of `buffered` this connection holds
        let id = open.add(connection.channel)
        defer {
            buffered.release(held)
            open.remove(id)
        }
        do {
            try await connection.executeThenClose { inbound, outbound in
                func answer(_ request: HTTPRequestHead, _ response: Response, close: Bool) async throws {
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: response.contentType)
                    headers.add(name: "Content-Length", value: "\(response.body.count)")
                    for (name, value) in response.headers { headers.add(name: name, value: value) }
                    if close || !request.isKeepAlive { headers.add(name: "Connection", value: "close") }
                    let status = HTTPResponseStatus(statusCode: response.status)
                    try await outbound.write(.head(HTTPResponseHead(version: request.version, status: status, headers: headers)))
                    if !response.body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body)))) }
                    try await outbound.write(.end(nil))
                }
                let tooLarge = Response(status: 413, contentType: "text/plain",
                                        body: Array("request body larger than \(limits.maximumBody) bytes\n".utf8))
                var head: HTTPRequestHead?
                var body = ByteBuffer()
                var reserved = false  // the declared body's bytes are already taken from `buffered`
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        body.clear()
                        open.setBusy(id, true)
                        // A declared length past the limit is refused before any of it is read.
                        reserved = false
                        if let declared = requestHead.headers.first(name: "Content-Length").flatMap(Int.init), declared >= 0 {
                            guard declared <= limits.maximumBody else {
                                try await answer(requestHead, tooLarge, close: true)
                                return
                            }
                            // A declared body is reserved whole before any of it is read, so
                            // connections never hold parts of the ceiling while waiting for more.
                            guard await buffered.acquire(declared) else { return }
                            held += min(declared, buffered.total)
                            reserved = true
                        }
                    case .body(var chunk):
                        guard let request = head else { continue }
                        guard body.readableBytes + chunk.readableBytes <= limits.maximumBody else {
                            try await answer(request, tooLarge, close: true)
                            return
                        }
                        // Every connection's buffered bytes share one ceiling: wait (and stop
                        // reading this connection) until finished requests give some back. A
                        // chunked body takes its share as it comes (bounded by the body timeout).
                        if !reserved {
                            guard await buffered.acquire(chunk.readableBytes) else { return }
                            held += min(chunk.readableBytes, buffered.total)
                        }
                        body.writeBuffer(&chunk)
                    case .end:
                        guard let request = head else { continue }
                        let bytes = Array(body.readableBytesView)
                        body = ByteBuffer()
                        head = nil
                        let response = try await respond(request, bytes)
                        buffered.release(held)
                        held = 0
                        // Shutting down: this answer is the connection's last.
                        let last = !open.setBusy(id, false)
                        try await answer(request, response, close: last)
                        // HTTP/1.0, or `Connection: close`: the answer ends the connection.
                        if !request.isKeepAlive || last { return }
                    }
                }
            }
        } catch {
            logger.debug("connection ended: \(error)")
        }
    }
}

/// The connections a listener has open, and whether each is answering a request: a graceful
/// shutdown closes the idle ones at once and lets the busy ones finish their answer.
final class OpenConnections: Sendable {
    private struct State {
        var channels: [Int: (channel: any Channel, busy: Bool)] = [:]
        var next = 0
        var shuttingDown = false
    }
    private let state = HostMutex(State())

    /// Registers an idle connection; its id.
    func add(_ channel: any Channel) -> Int {
        let (id, closing) = state.withLock { state -> (Int, Bool) in
            state.next += 1
            state.channels[state.next] = (channel, false)
            return (state.next, state.shuttingDown)
        }
        if closing { channel.close(promise: nil) }
        return id
    }

    func remove(_ id: Int) { state.withLock { _ = $0.channels.removeValue(forKey: id) } }

    /// Marks a connection busy (a request head arrived) or idle (answered); false when the
    /// server is shutting down (then the answer is the connection's last).
    @discardableResult
    func setBusy(_ id: Int, _ busy: Bool) -> Bool {
        state.withLock { state in
            state.channels[id]?.busy = busy
            return !state.shuttingDown
        }
    }

    /// Stops the connections: idle ones are closed now, busy ones after their answer.
    func shutDown() {
        let idle = state.withLock { state -> [any Channel] in
            state.shuttingDown = true
            return state.channels.values.filter { !$0.busy }.map(\.channel)
        }
        for channel in idle { channel.close(promise: nil) }
    }
}
