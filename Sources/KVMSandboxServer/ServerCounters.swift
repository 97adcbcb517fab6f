import Foundation
import KVMSandbox
import Metrics

/// What a server did: running totals (read with `snapshot`, printed by `summary`), whether it
/// can take work now (`readiness`, for `/readyz`), and the same figures reported to
/// swift-metrics, so whichever backend the embedder bootstraps (Prometheus for
/// `kvmsandbox serve --metrics`) sees them. Names carry the server's unit, `request` (function
/// mode) or `connection` (socket mode); see `metricHelp` for the list.
///
/// (@unchecked: `values` and `state` are read and written under `lock` only; the swift-metrics
/// handles are thread-safe.)
public final class ServerCounters: @unchecked Sendable {
    /// What one unit of work is.
    public enum Unit: String, Sendable {
        /// An HTTP request (function mode).
        case request
        /// A TCP connection (socket mode).
        case connection
    }

    /// The unit this server counts.
    public let unit: Unit
    private let lock = NSLock()
    private var values = Values()
    private var state = (listening: false, stopping: false, vms: 0)
    private let outcomes: [String: Counter]
    private let latency: Metrics.Timer
    private let resetTime: Metrics.Timer
    private let dirtyPages: Recorder
    private let exits: Recorder
    private let inFlightGauge: Gauge
    private let vms = Gauge(label: "kvmsandbox_vms")

    /// The outcome labels of `kvmsandbox_requests_total` (`kvmsandbox_connections_total`).
    public static let outcomeLabels = ["ok", "exit_nonzero", "fault", "timeout", "killed", "other"]

    /// Counters of `unit`s, reported to the metrics system bootstrapped now (or none).
    public init(unit: Unit = .request) {
        self.unit = unit
        let name = unit.rawValue
        outcomes = Dictionary(uniqueKeysWithValues: Self.outcomeLabels.map {
            ($0, Counter(label: "kvmsandbox_\(name)s_total", dimensions: [("outcome", $0)]))
        })
        latency = Metrics.Timer(label: "kvmsandbox_\(name)_duration_seconds")
        resetTime = Metrics.Timer(label: "kvmsandbox_reset_duration_seconds")
        dirtyPages = Recorder(label: "kvmsandbox_\(name)_dirty_pages")
        exits = Recorder(label: "kvmsandbox_\(name)_vm_exits")
        inFlightGauge = Gauge(label: "kvmsandbox_\(name)s_in_flight")
        inFlightGauge.record(0)
    }

    /// The `# HELP` text of every metric a server reports, by name (both units).
    public static let metricHelp: [String: String] = {
        var help = [
            "kvmsandbox_vms": "VMs (forks of the snapshot) serving, one per worker.",
            "kvmsandbox_reset_duration_seconds": "Time to bring a VM back to the snapshot after a request or connection.",
            "kvmsandbox_build_info": "The kvmsandbox version serving (always 1).",
        ]
        for unit in ["request", "connection"] {
            help["kvmsandbox_\(unit)s_total"] = "\(unit.capitalized)s served, by how the guest's run ended."
            help["kvmsandbox_\(unit)_duration_seconds"] = "Time the guest spent on a \(unit), reset not included."
            help["kvmsandbox_\(unit)_dirty_pages"] = "Guest pages a \(unit) dirtied (copied back by its reset)."
            help["kvmsandbox_\(unit)_vm_exits"] = "VM exits a \(unit) took."
            help["kvmsandbox_\(unit)s_in_flight"] = "\(unit.capitalized)s being served now."
        }
        return help
    }()

    /// A copy of the totals at one moment.
    public struct Values: Sendable {
        /// Requests (connections, in socket mode) served, and those that ended badly (a crash,
        /// a timeout, a nonzero exit).
        public var requests = 0, failures = 0
        /// Nanoseconds spent in the guest and in resets.
        public var serviceNanoseconds: UInt64 = 0, resetNanoseconds: UInt64 = 0
        /// Pages resets copied back.
        public var dirtyPages = 0
        /// VM exits the requests took.
        public var exits = 0
        /// Requests being served now.
        public var inFlight = 0
    }

    /// The totals now.
    public var snapshot: Values { lock.withLock { values } }

    /// Reports how many VMs serve requests.
    public func setVMs(_ count: Int) {
        lock.withLock { state.vms = count }
        vms.record(count)
    }

    /// Marks the server as listening (it can take work from now on).
    public func listening() { lock.withLock { state.listening = true } }

    /// Marks the server as shutting down (it finishes what it has and takes nothing new).
    public func stopping() { lock.withLock { state.stopping = true } }

    /// Whether the server can take work now, and why not: ready once it listens with a VM
    /// free; not while every VM is busy or after a graceful shutdown began.
    public var readiness: (ready: Bool, reason: String) {
        lock.withLock {
            if state.stopping { return (false, "shutting down") }
            if !state.listening { return (false, "starting") }
            if values.inFlight >= state.vms { return (false, "busy: \(values.inFlight) of \(state.vms) VM(s) serving") }
            return (true, "ready: \(state.vms - values.inFlight) of \(state.vms) VM(s) free")
        }
    }

    /// Counts a request as started (in flight until `finished()`).
    public func started() {
        let now = lock.withLock { values.inFlight += 1; return values.inFlight }
        inFlightGauge.record(now)
    }

    /// Counts a request started by `started()` as done.
    public func finished() {
        let now = lock.withLock { values.inFlight -= 1; return values.inFlight }
        inFlightGauge.record(now)
    }

    /// The outcome label of a run that ended with `outcome` (`.ready` in socket mode: the
    /// guest finished the connection).
    public static func label(_ outcome: RunOutcome) -> String {
        switch outcome {
        case .ready, .exited(status: 0): return "ok"
        case .exited: return "exit_nonzero"
        case .fault: return "fault"
        case .timedOut: return "timeout"
        case .signaled: return "killed"
        default: return "other"
        }
    }

    /// Counts one request: how its run ended (`.ready` in socket mode: the guest finished the
    /// connection), its time in the VM and resetting, the pages the reset copied and its exits.
    public func record(outcome: RunOutcome, nanoseconds: UInt64, resetNanoseconds: UInt64, dirtyPages pages: Int, exits exitCount: Int) {
        let label = Self.label(outcome)
        lock.withLock {
            values.requests += 1
            if label != "ok" { values.failures += 1 }
            values.serviceNanoseconds &+= nanoseconds
            values.resetNanoseconds &+= resetNanoseconds
            values.dirtyPages &+= pages
            values.exits &+= exitCount
        }
        outcomes[label]?.increment()
        latency.recordNanoseconds(Int64(clamping: nanoseconds))
        if resetNanoseconds > 0 { resetTime.recordNanoseconds(Int64(clamping: resetNanoseconds)) }
        dirtyPages.record(pages)
        exits.record(exitCount)
    }

    /// One line: requests, failures, and per request the mean service time, reset time, dirty
    /// pages and exits.
    public var summary: String {
        let values = snapshot
        let n = Double(max(1, values.requests))
        func mean(_ total: UInt64) -> String { String(format: "%.1f us", Double(total) / n / 1000) }
        return "\(values.requests) \(unit.rawValue)(s), \(values.failures) failed; per \(unit.rawValue): \(mean(values.serviceNanoseconds)) in the VM, "
            + "\(mean(values.resetNanoseconds)) resetting, \(String(format: "%.1f", Double(values.dirtyPages) / n)) dirty pages, "
            + "\(String(format: "%.1f", Double(values.exits) / n)) exits"
    }
}
