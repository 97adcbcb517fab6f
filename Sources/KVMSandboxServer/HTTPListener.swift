import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server on SwiftNIO: each request's head and whole body go to a responder,
/// whose answer is sent with a Content-Length. Function mode and the metrics endpoint use it.
enum HTTPListener {
    /// What a responder answers.
    struct Response: Sendable {
        var status: Int
        var contentType: String
        var body: [UInt8]
    }

    /// Listens on `host`:`port` (0: any free port, reported to `bound`) until the task is
    /// cancelled, answering every request with `respond` (requests on one connection in order).
    static func run(host: String, port: Int, maximumBody: Int, logger: Logger, bound: @Sendable (Int) -> Void,
                    respond: @escaping @Sendable (HTTPRequestHead, [UInt8]) async throws -> Response) async throws {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
                }
            }
        let actual = channel.channel.localAddress?.port ?? port
        bound(actual)
        logger.info("listening on \(host):\(actual)")
        try await withThrowingDiscardingTaskGroup { group in
            try await channel.executeThenClose { connections in
                for try await connection in connections {
                    group.addTask { await serve(connection, maximumBody: maximumBody, logger: logger, respond: respond) }
                }
            }
        }
    }

    /// Answers the requests of one connection, in order.
    private static func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, maximumBody: Int,
                              logger: Logger, respond: @Sendable (HTTPRequestHead, [UInt8]) async throws -> Response) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        body.clear()
                    case .body(var chunk):
                        guard body.readableBytes + chunk.readableBytes <= maximumBody else { throw TooLarge() }
                        body.writeBuffer(&chunk)
                    case .end:
                        guard let request = head else { continue }
                        let response = try await respond(request, Array(body.readableBytesView))
                        var headers = HTTPHeaders()
                        headers.add(name: "Content-Type", value: response.contentType)
                        headers.add(name: "Content-Length", value: "\(response.body.count)")
                        if !request.isKeepAlive { headers.add(name: "Connection", value: "close") }
                        let status = HTTPResponseStatus(statusCode: response.status)
                        try await outbound.write(.head(HTTPResponseHead(version: request.version, status: status, headers: headers)))
                        if !response.body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body)))) }
                        try await outbound.write(.end(nil))
                        // HTTP/1.0, or `Connection: close`: the answer ends the connection.
                        if !request.isKeepAlive { return }
                    }
                }
            }
        } catch {
            logger.debug("connection ended: \(error)")
        }
    }

    struct TooLarge: Error {}
}
