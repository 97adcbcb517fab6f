import Dispatch
import Foundation
import Logging
import MCP
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// MCP's stdio transport (newline-delimited JSON-RPC) over two descriptors, read and written by
/// blocking calls on threads of their own. (The SDK's `StdioTransport` polls a non-blocking
/// stdin every 10 ms, which added 5-10 ms to every request of an agent.) A line longer than
/// `maximumLine` bytes ends the connection: a client cannot make the server buffer without bound.
public actor LineTransport: Transport {
    /// Where the transport logs.
    public nonisolated let logger: Logger
    private let input: Int32
    private let output: Int32
    private let maximumLine: Int
    private let incoming: AsyncThrowingStream<Data, Swift.Error>
    private let continuation: AsyncThrowingStream<Data, Swift.Error>.Continuation
    private let writer = DispatchQueue(label: "kvmsandbox.mcp.write")
    private var started = false

    /// A transport reading `input` and writing `output` (default: this process's stdin, stdout).
    public init(input: Int32 = 0, output: Int32 = 1, maximumLine: Int = 64 << 20, logger: Logger = Logger(label: "kvmsandbox.mcp")) {
        self.input = input
        self.output = output
        self.maximumLine = maximumLine
        self.logger = logger
        (incoming, continuation) = AsyncThrowingStream.makeStream()
    }

    /// Starts the reading thread.
    public func connect() async throws {
        guard !started else { return }
        started = true
        let input = self.input, maximumLine = self.maximumLine, continuation = self.continuation, logger = self.logger
        Thread.detachNewThread {
            Self.readLines(from: input, maximumLine: maximumLine, logger: logger, into: continuation)
        }
    }

    /// Stops delivering messages.
    public func disconnect() async {
        continuation.finish()
    }

    /// Writes `data` and a newline, on the writing thread.
    public func send(_ data: Data) async throws {
        let output = self.output
        let failure: Int32? = await withCheckedContinuation { done in
            writer.async {
                var message = data
                message.append(UInt8(ascii: "\n"))
                let error: Int32? = message.withUnsafeBytes { bytes in
                    var offset = 0
                    while offset < bytes.count {
                        let written = write(output, bytes.baseAddress! + offset, bytes.count - offset)
                        if written < 0 {
                            if errno == EINTR { continue }
                            if errno == EAGAIN {
                                var ready = pollfd(fd: output, events: Int16(POLLOUT), revents: 0)
                                _ = poll(&ready, 1, 1000)
                                continue
                            }
                            return errno
                        }
                        offset += written
                    }
                    return nil
                }
                done.resume(returning: error)
            }
        }
        if let failure { throw MCPError.transportError(Errno(rawValue: failure)) }
    }

    /// The messages read, one per line.
    public func receive() -> AsyncThrowingStream<Data, Swift.Error> { incoming }

    /// The reading thread: blocking reads (a poll where the descriptor is non-blocking), split at
    /// newlines, until end of file, an error, or a line past the limit.
    private static func readLines(from input: Int32, maximumLine: Int, logger: Logger,
                                  into continuation: AsyncThrowingStream<Data, Swift.Error>.Continuation) {
        var pending = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress!, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN {
                    var ready = pollfd(fd: input, events: Int16(POLLIN), revents: 0)
                    _ = poll(&ready, 1, -1)
                    continue
                }
                logger.error("reading the client: \(String(cString: strerror(errno)))")
                break
            }
            if count == 0 {
                logger.notice("the client closed its end (end of file)")
                break
            }
            var start = pending.count
            pending.append(contentsOf: buffer[..<count])
            var lineStart = 0
            while let newline = pending[start...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[lineStart..<newline]
                if !line.isEmpty { continuation.yield(Data(line)) }
                lineStart = newline + 1
                start = lineStart
            }
            pending.removeFirst(lineStart)
            if pending.count > maximumLine {
                logger.error("the client sent a line of more than \(maximumLine) bytes; closing")
                break
            }
        }
        continuation.finish()
    }
}
