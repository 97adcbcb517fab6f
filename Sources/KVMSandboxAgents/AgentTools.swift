import Foundation
import MCP

/// The tools `kvmsandbox mcp` offers an agent, with the schemas and descriptions it reads, and
/// the dispatch of a tool call to the session manager.
public enum AgentTools {
    static let sessionProperty: Value = [
        "type": "string",
        "description": "The session to use: variables, imports and files persist between calls of one session. Created on first use; default \"default\".",
    ]

    /// The tools, as `tools/list` shows them.
    public static func tools(_ configuration: AgentConfiguration) -> [Tool] {
        let timeout = Int(configuration.cellTimeout.seconds.rounded())
        return [
            Tool(name: "run_python", title: "Run Python",
                 description: """
                 Run Python 3 code in an isolated, stateful session (a micro-VM, like a Jupyter kernel): globals, imports \
                 and files persist between calls of the same session. Returns stdout, stderr, the repr of the last \
                 expression, and an exception with its traceback. matplotlib figures (and images saved under outputs/) \
                 come back as images. The working directory is the session's workspace \(configuration.workspace). \
                 No network. A call running past \(timeout) s is interrupted (KeyboardInterrupt; the session keeps its state).
                 """,
                 inputSchema: ["type": "object", "properties": [
                    "code": ["type": "string", "description": "Python source to run as one cell."],
                    "session": sessionProperty,
                 ], "required": ["code"]]),
            Tool(name: "run_command", title: "Run a command",
                 description: """
                 Run a shell command (/bin/sh -c) or an argv list in the session's workspace, inside the same micro-VM as \
                 its Python session. Returns the exit status, stdout and stderr.
                 """,
                 inputSchema: ["type": "object", "properties": [
                    "command": ["type": "string", "description": "A shell command line, e.g. \"ls -l | sort\"."],
                    "argv": ["type": "array", "items": ["type": "string"], "description": "The program and its arguments, without a shell (instead of command)."],
                    "stdin": ["type": "string", "description": "Text for the command's standard input."],
                    "session": sessionProperty,
                 ]]),
            Tool(name: "write_file", title: "Write a file",
                 description: "Write a file in the session's workspace (parent folders are created). Give content as text, or base64 for binary data.",
                 inputSchema: ["type": "object", "properties": [
                    "path": ["type": "string", "description": "Path relative to the workspace."],
                    "content": ["type": "string", "description": "The file's text (UTF-8)."],
                    "base64": ["type": "string", "description": "The file's bytes, base64-encoded (instead of content)."],
                    "session": sessionProperty,
                 ], "required": ["path"]]),
            Tool(name: "read_file", title: "Read a file",
                 description: "Read a file from the session's workspace: text as text, images as images, other binary data as base64.",
                 inputSchema: ["type": "object", "properties": [
                    "path": ["type": "string", "description": "Path relative to the workspace."],
                    "session": sessionProperty,
                 ], "required": ["path"]]),
            Tool(name: "list_files", title: "List files",
                 description: "List the files in the session's workspace (recursively, with sizes).",
                 inputSchema: ["type": "object", "properties": [
                    "path": ["type": "string", "description": "A folder relative to the workspace (default: all of it)."],
                    "session": sessionProperty,
                 ]]),
            Tool(name: "reset_session", title: "Reset a session",
                 description: "Start a session afresh: a new interpreter, no variables, an empty workspace.",
                 inputSchema: ["type": "object", "properties": ["session": sessionProperty]]),
            Tool(name: "close_session", title: "Close a session",
                 description: "Close a session and free its micro-VM.",
                 inputSchema: ["type": "object", "properties": ["session": sessionProperty]]),
        ]
    }

    /// A tool call's answer; failures an agent can act on are results with `isError`, not errors.
    public static func call(_ name: String, arguments: [String: Value], manager: SessionManager) async -> CallTool.Result {
        let session = arguments["session"]?.stringValue ?? "default"
        do throws(SessionManager.Failure) {
            switch name {
            case "run_python":
                guard let code = arguments["code"]?.stringValue else { return problem("run_python needs code (a string)") }
                return render(try await manager.perform(.run(code), in: session), session: session)
            case "run_command":
                let argv = arguments["argv"]?.arrayValue?.compactMap(\.stringValue)
                let command = arguments["command"]?.stringValue
                guard (command != nil) != (argv?.isEmpty == false) else { return problem("run_command needs either command (a string) or argv (a list of strings)") }
                return render(try await manager.perform(.command(command, argv: argv, stdin: arguments["stdin"]?.stringValue), in: session), session: session)
            case "write_file":
                guard let path = arguments["path"]?.stringValue else { return problem("write_file needs a path") }
                let text = arguments["content"]?.stringValue, base64 = arguments["base64"]?.stringValue
                guard (text == nil) != (base64 == nil) else { return problem("write_file needs either content or base64") }
                return render(try await manager.perform(.write(path, text: text, base64: base64), in: session), session: session)
            case "read_file":
                guard let path = arguments["path"]?.stringValue else { return problem("read_file needs a path") }
                return render(try await manager.perform(.read(path), in: session), session: session)
            case "list_files":
                return render(try await manager.perform(.list(arguments["path"]?.stringValue), in: session), session: session)
            case "reset_session":
                try await manager.reset(session)
                return CallTool.Result(content: [.text(text: "session \(session) starts afresh", annotations: nil, _meta: nil)])
            case "close_session":
                let closed = await manager.close(session)
                return CallTool.Result(content: [.text(text: closed ? "session \(session) closed" : "no session \(session) was open",
                                                      annotations: nil, _meta: nil)])
            default:
                return problem("no tool named \(name)")
            }
        } catch {
            return problem(error.description)
        }
    }

    static func problem(_ message: String) -> CallTool.Result {
        CallTool.Result(content: [.text(text: message, annotations: nil, _meta: nil)], isError: true)
    }

    /// The reply as content an agent reads (labelled text sections, images) and as structured
    /// content for programs.
    static func render(_ reply: SessionReply, session: String) -> CallTool.Result {
        var sections: [String] = []
        func section(_ title: String, _ text: String?) {
            guard let text, !text.isEmpty else { return }
            sections.append("[\(title)]\n" + (text.hasSuffix("\n") ? String(text.dropLast()) : text))
        }
        section("stdout", reply.stdout)
        section("stderr", reply.stderr)
        if let status = reply.exitStatus { sections.append("[exit status] \(status)") }
        section("result", reply.result)
        if let error = reply.error {
            section("error", error.traceback.flatMap { $0.isEmpty ? nil : $0 } ?? "\(error.type): \(error.message)")
        }
        if let text = reply.text { section(reply.path ?? "file", text) }
        if let entries = reply.entries {
            let lines = entries.map { $0.path.hasSuffix("/") ? $0.path : "\($0.path)  (\($0.bytes) bytes)" }
            section("files", lines.isEmpty ? "(the workspace is empty)" : lines.joined(separator: "\n") + (reply.truncated == true ? "\n[... more files]" : ""))
        } else if reply.text == nil, reply.base64 == nil, reply.error == nil, let path = reply.path, let bytes = reply.bytes {
            sections.append("wrote \(path) (\(bytes) bytes)")
        }
        var content: [Tool.Content] = []
        if !sections.isEmpty || (reply.images ?? []).isEmpty {
            content.append(.text(text: sections.isEmpty ? "(no output)" : sections.joined(separator: "\n"), annotations: nil, _meta: nil))
        }
        for image in reply.images ?? [] {
            content.append(.image(data: image.data, mimeType: image.mimeType, annotations: nil, _meta: nil))
        }
        if let data = reply.base64, let type = reply.mimeType {
            if type.hasPrefix("image/") {
                content.append(.image(data: data, mimeType: type, annotations: nil, _meta: nil))
            } else {
                content.append(.resource(resource: .binary(Data(base64Encoded: data) ?? Data(), uri: "file://\(reply.path ?? "file")", mimeType: type)))
            }
        }
        var structured = reply
        structured.images = reply.images?.map { SessionReply.Image(name: $0.name, mimeType: $0.mimeType, data: "(in content)") }
        let value: Value? = try? Value(StructuredReply(session: session, reply: structured))
        return CallTool.Result(content: content, structuredContent: value, isError: reply.error != nil)
    }

    /// The structured content of a reply: the session and the driver's fields.
    struct StructuredReply: Codable {
        var session: String
        var reply: SessionReply
        func encode(to encoder: Encoder) throws {
            try reply.encode(to: encoder)
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(session, forKey: .session)
        }
        enum Key: String, CodingKey { case session }
    }
}
