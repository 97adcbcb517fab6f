import Foundation

/// A request to a session's driver: one JSON object per frame.
public struct SessionRequest: Encodable, Sendable {
    /// `run`, `command`, `write`, `read` or `list`.
    public var op: String
    var code: String?
    var command: String?
    var argv: [String]?
    var stdin: String?
    var path: String?
    var content: String?
    var base64: String?

    init(op: String) { self.op = op }

    /// Runs Python `code` as one cell.
    public static func run(_ code: String) -> SessionRequest {
        var request = SessionRequest(op: "run")
        request.code = code
        return request
    }

    /// Runs a shell command line (`/bin/sh -c`), or `argv` without a shell, with `stdin`.
    public static func command(_ command: String? = nil, argv: [String]? = nil, stdin: String? = nil) -> SessionRequest {
        var request = SessionRequest(op: "command")
        request.command = command
        request.argv = argv
        request.stdin = stdin
        return request
    }

    /// Writes a file in the workspace: `text` as UTF-8, or `base64`-encoded bytes.
    public static func write(_ path: String, text: String? = nil, base64: String? = nil) -> SessionRequest {
        var request = SessionRequest(op: "write")
        request.path = path
        request.content = text
        request.base64 = base64
        return request
    }

    /// Reads a file in the workspace.
    public static func read(_ path: String) -> SessionRequest {
        var request = SessionRequest(op: "read")
        request.path = path
        return request
    }

    /// Lists the files under `path` in the workspace (nil: all of it).
    public static func list(_ path: String? = nil) -> SessionRequest {
        var request = SessionRequest(op: "list")
        request.path = path
        return request
    }

    /// The frame the driver reads: the JSON's length in decimal, a newline, the JSON.
    func frame() throws -> [UInt8] {
        let body = try JSONEncoder().encode(self)
        return Array("\(body.count)\n".utf8) + Array(body)
    }
}

/// What a session's driver answered (any field may be missing: the guest wrote it).
public struct SessionReply: Codable, Sendable, Equatable {
    /// An exception raised by a cell (or an operation that failed), as Python names it.
    public struct Failure: Codable, Sendable, Equatable {
        /// The exception's class name (`ZeroDivisionError`), or `Timeout`, `SessionRestarted`.
        public var type: String
        /// `str(exception)`.
        public var message: String
        /// The formatted traceback, starting in the cell.
        public var traceback: String?
    }

    /// A picture a cell produced: a matplotlib figure or an image saved under `outputs/`.
    public struct Image: Codable, Sendable, Equatable {
        /// `figure-1.png` or the file's path in the workspace.
        public var name: String
        /// `image/png`, `image/svg+xml`, ...
        public var mimeType: String
        /// The file, base64-encoded.
        public var data: String
    }

    /// One entry of `list_files`.
    public struct Entry: Codable, Sendable, Equatable {
        /// The path in the workspace (directories end with `/`).
        public var path: String
        /// The file's size in bytes (0 for a directory).
        public var bytes: Int
    }

    /// What the cell printed (bounded; a truncation is marked in the text).
    public var stdout: String?
    /// What the cell wrote to stderr (bounded likewise).
    public var stderr: String?
    /// `repr` of the cell's last expression, when it was one and not None.
    public var result: String?
    /// The exception, when there was one.
    public var error: Failure?
    /// Pictures the cell made.
    public var images: [Image]?
    /// `run_command`: the command's exit status.
    public var exitStatus: Int?
    /// `read_file`/`write_file`: the path in the workspace.
    public var path: String?
    /// `read_file`/`write_file`: the file's size.
    public var bytes: Int?
    /// `read_file`: the contents when they are UTF-8 text.
    public var text: String?
    /// `read_file`: the contents base64-encoded when they are not text.
    public var base64: String?
    /// `read_file`: the type of non-text contents.
    public var mimeType: String?
    /// `list_files`: the workspace's files.
    public var entries: [Entry]?
    /// `list_files`: whether the listing stopped at its limit.
    public var truncated: Bool?
    /// Seconds the driver spent on the request.
    public var seconds: Double?
    /// VM exits the request took (set by the host).
    public var exits: Int?
    /// Microseconds the request took in the VM, from the host's side.
    public var microseconds: Int?
    /// Whether the request ended the interpreter, so that the session restarts from the warm
    /// snapshot (set by the host).
    public var restarted: Bool?

    /// A reply that only reports a failure the host saw (a timeout, a restart).
    static func failure(_ type: String, _ message: String, stdout: String = "", stderr: String = "") -> SessionReply {
        var reply = SessionReply()
        reply.error = Failure(type: type, message: message, traceback: nil)
        reply.stdout = stdout
        reply.stderr = stderr
        return reply
    }

    /// Parses a turn's captured stdout: the last marker's JSON, and what came before it (output
    /// that bypassed the driver, as a subprocess's) prepended to `stdout`. Nil when there is no
    /// readable answer.
    static func parse(_ output: [UInt8], limit: Int) -> SessionReply? {
        let marker = PythonDriver.marker
        guard output.count >= marker.count else { return nil }
        var start: Int?
        var index = output.count - marker.count
        while index >= 0 {
            if output[index] == marker[0] && output[index..<index + marker.count].elementsEqual(marker) { start = index; break }
            index -= 1
        }
        guard let start, var reply = try? JSONDecoder().decode(SessionReply.self, from: Data(output[(start + marker.count)...])) else {
            return nil
        }
        let before = String(decoding: output[..<start].prefix(limit), as: UTF8.self)
        if !before.isEmpty { reply.stdout = before + (reply.stdout ?? "") }
        return reply
    }
}
