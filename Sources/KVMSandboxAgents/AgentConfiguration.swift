import KVMSandbox

/// How `kvmsandbox mcp` runs its Python sessions: the sandbox every session's VM gets (grants,
/// memory, connections: the policy flags of `run` and `serve`) and the limits of sessions.
public struct AgentConfiguration: Sendable {
    /// The sandbox of every session: its grants, memory, allowed connections. The program,
    /// arguments, standard streams and the workspace are set by the session manager.
    public var sandbox = SandboxConfiguration()
    /// The Python interpreter (a host path; it runs inside the VM).
    public var python = "/usr/bin/python3"
    /// Where each session's files live inside its VM: an in-memory directory of its own.
    public var workspace = "/workspace"
    /// Wall-clock limit of one cell or command: then a SIGINT (KeyboardInterrupt, the session
    /// keeps its state); a cell that does not stop for it is ended a grace period later
    /// (a quarter of the limit, 0.5 to 3 s) and the session restarts empty.
    public var cellTimeout: Duration = .seconds(30)
    /// Sessions open at once; past it, opening one fails with a clear error.
    public var maximumSessions = 16
    /// Sessions forked and warmed up ahead of need, so that a new session answers its first
    /// cell as fast as a warm one (each holds the pages one empty cell touches).
    public var spareSessions = 2
    /// A session nobody used for this long is closed (nil: never).
    public var sessionIdle: Duration? = .seconds(600)
    /// Characters of stdout, stderr, a result or a traceback a reply carries at most; longer
    /// ones are cut with a visible marker.
    public var outputLimit = 64 << 10
    /// Bytes a file read, written or returned as an image may have.
    public var fileLimit = 8 << 20
    /// Host directories added to `sys.path` (granted read-only): where an operator installed
    /// packages such as numpy (`pip install --target DIR numpy`).
    public var pythonPath: [String] = []
    /// Modules the warm snapshot imports, so every session starts with them loaded.
    public var preload: [String] = []
    /// Whether the warm snapshot imports matplotlib (when installed) with its non-interactive
    /// backend: its first import builds a font cache for seconds, which every session would
    /// otherwise pay again; once in the snapshot, a plot takes milliseconds.
    public var preloadsMatplotlib = true

    /// A configuration with the sandbox's defaults (1 GiB of memory, committed lazily; the
    /// default system view, which shows `/usr` and so the interpreter's standard library).
    public init() {
        sandbox.memorySize = 1 << 30
        sandbox.memoryDirectoryCapacity = 64 << 20
    }

    /// The configuration of the VM the warm snapshot is booted in.
    func bootConfiguration() -> SandboxConfiguration {
        var configuration = sandbox
        configuration.programPath = python
        configuration.arguments = PythonDriver.arguments(preload: preload + (preloadsMatplotlib ? ["?matplotlib.pyplot"] : []))
        configuration.files += pythonPath.map { FileGrant(hostPath: $0) }
        var environment = configuration.environment.filter {
            !$0.hasPrefix("PYTHONPATH=") && !$0.hasPrefix("KVMSANDBOX_") && !$0.hasPrefix("HOME=")
        }
        if !pythonPath.isEmpty { environment.append("PYTHONPATH=" + pythonPath.joined(separator: ":")) }
        environment += ["HOME=\(workspace)", "XDG_CACHE_HOME=/tmp/.cache", "KVMSANDBOX_WORKSPACE=\(workspace)", "KVMSANDBOX_OUTPUT_LIMIT=\(outputLimit)",
                        "KVMSANDBOX_FILE_LIMIT=\(fileLimit)"]
        if !environment.contains(where: { $0.hasPrefix("PATH=") }) { environment.append("PATH=/usr/local/bin:/usr/bin:/bin") }
        configuration.environment = environment
        if !configuration.memoryDirectories.contains(workspace) { configuration.memoryDirectories.append(workspace) }
        if !configuration.memoryDirectories.contains("/tmp") { configuration.memoryDirectories.append("/tmp") }
        configuration.standardInput = .empty
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        // Images and files travel through stdout: room for the biggest a reply may carry.
        configuration.outputLimit = UInt64(max(fileLimit * 2, 1 << 20) + outputLimit * 16)
        return configuration
    }

    /// What cannot work, or nil.
    public var problem: String? {
        if maximumSessions < 1 { return "at least one session must be allowed" }
        if spareSessions < 0 || spareSessions > 64 { return "spare sessions must be between 0 and 64" }
        if cellTimeout <= .zero { return "the cell timeout must be positive" }
        if let sessionIdle, sessionIdle <= .zero { return "the idle time must be positive" }
        if outputLimit < 256 { return "the output limit must be at least 256 characters" }
        if !workspace.hasPrefix("/") || workspace == "/" { return "the workspace must be an absolute directory other than /" }
        for module in preload where module.isEmpty || !module.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "." }) {
            return "\(module) is not a module name"
        }
        return nil
    }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
