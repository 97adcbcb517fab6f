import Metrics

/// What `kvmsandbox mcp` reports to swift-metrics (Prometheus with `--metrics`): sessions opened,
/// closed and open, requests by operation and outcome, their duration and VM exits.
struct AgentMetrics: Sendable {
    private let sessionsOpened = Counter(label: "kvmsandbox_mcp_sessions_opened_total")
    private let sessionsClosed = Counter(label: "kvmsandbox_mcp_sessions_closed_total")
    private let sessionsOpen = Gauge(label: "kvmsandbox_mcp_sessions_open")
    private let duration = Metrics.Timer(label: "kvmsandbox_mcp_request_duration_seconds")
    private let exits = Recorder(label: "kvmsandbox_mcp_request_vm_exits")

    /// The `# HELP` text of each metric, by name.
    static let help: [String: String] = [
        "kvmsandbox_mcp_sessions_opened_total": "Sessions opened (a fork of the warm snapshot each).",
        "kvmsandbox_mcp_sessions_closed_total": "Sessions closed by the agent, for idleness or at shutdown.",
        "kvmsandbox_mcp_sessions_open": "Sessions open now.",
        "kvmsandbox_mcp_requests_total": "Tool calls that ran in a session, by operation (run, command, read, write, list) and outcome (ok, error: the code raised, timeout: interrupted at the limit, restarted: the interpreter ended).",
        "kvmsandbox_mcp_request_duration_seconds": "Time a tool call took in the server.",
        "kvmsandbox_mcp_request_vm_exits": "VM exits a tool call took.",
    ]

    init() { sessionsOpen.record(0) }

    func opened(open: Int) {
        sessionsOpened.increment()
        sessionsOpen.record(open)
    }

    func closed(open: Int) {
        sessionsClosed.increment()
        sessionsOpen.record(open)
    }

    func request(op: String, reply: SessionReply, duration elapsed: Duration) {
        let outcome: String
        switch reply.error?.type {
        case nil: outcome = "ok"
        case "Timeout": outcome = "timeout"
        default: outcome = reply.restarted == true ? "restarted" : "error"
        }
        Counter(label: "kvmsandbox_mcp_requests_total", dimensions: [("op", op), ("outcome", outcome)]).increment()
        let (seconds, attoseconds) = elapsed.components
        duration.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        if let exits = reply.exits { self.exits.record(exits) }
    }
}

extension SessionManager {
    /// The `# HELP` text of the metrics sessions report, by name (for a Prometheus endpoint).
    public static var metricHelp: [String: String] { AgentMetrics.help }
}
