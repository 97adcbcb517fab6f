import Foundation
import KVMSandbox
import Metrics

/// What a server did: running totals (read with `snapshot`, printed by `summary`), and the same
/// figures reported to swift-metrics, so whichever backend the embedder bootstraps (Prometheus
/// for `kvmsandbox serve --metrics`) sees them: `kvmsandbox_requests_total` by outcome,
/// `kvmsandbox_request_duration_seconds` and `kvmsandbox_reset_duration_seconds` (timers),
/// `kvmsandbox_dirty_pages` and `kvmsandbox_exits` per request (recorders), `kvmsandbox_vms`.
///
/// (@unchecked: `values` is read and written under `lock` only; the swift-metrics handles are thread-safe.)
public final class ServerCounters: @unchecked Sendable {
    private let lock = NSLock()
    private var values = Values()
    private let outcomes: [String: Counter]
    private let latency = Metrics.Timer(label: "kvmsandbox_request_duration_seconds")
    private let resetTime = Metrics.Timer(label: "kvmsandbox_reset_duration_seconds")
    private let dirtyPages = Recorder(label: "kvmsandbox_dirty_pages")
    private let exits = Recorder(label: "kvmsandbox_exits")
    private let vms = Gauge(label: "kvmsandbox_vms")

    /// The outcome labels of `kvmsandbox_requests_total`.
    public static let outcomeLabels = ["ok", "exit_nonzero", "fault", "timeout", "killed", "other"]

    /// Counters reported to the metrics system bootstrapped now (or none).
    public init() {
        outcomes = Dictionary(uniqueKeysWithValues: Self.outcomeLabels.map {
            ($0, Counter(label: "kvmsandbox_requests_total", dimensions: [("outcome", $0)]))
        })
    }

    /// A copy of the totals at one moment.
    public struct Values: Sendable {
        /// Requests (connections, in socket mode) served, and those that ended badly (a crash,
        /// a timeout, a nonzero exit).
        public var requests = 0, failures = 0
        /// Nanoseconds spent in the guest and in resets, and pages resets copied back.
        public var serviceNanoseconds: UInt64 = 0, resetNanoseconds: UInt64 = 0
        public var dirtyPages = 0
        /// VM exits the requests took.
        public var exits = 0
    }

    /// The totals now.
    public var snapshot: Values { lock.withLock { values } }

    /// Reports how many VMs serve requests.
    public func setVMs(_ count: Int) { vms.record(count) }

    /// Counts one request: how its run ended (`.ready` in socket mode: the guest finished the
    /// connection), its time in the VM and resetting, the pages the reset copied and its exits.
    public func record(outcome: RunOutcome, nanoseconds: UInt64, resetNanoseconds: UInt64, dirtyPages pages: Int, exits exitCount: Int) {
        let label: String
        switch outcome {
        case .ready, .exited(status: 0): label = "ok"
        case .exited: label = "exit_nonzero"
        case .fault: label = "fault"
        case .timedOut: label = "timeout"
        case .signaled: label = "killed"
        default: label = "other"
        }
        lock.withLock {
            values.requests += 1
            if label != "ok" { values.failures += 1 }
            values.serviceNanoseconds &+= nanoseconds
            values.resetNanoseconds &+= resetNanoseconds
            values.dirtyPages += pages
            values.exits += exitCount
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
        return "\(values.requests) request(s), \(values.failures) failed; per request: \(mean(values.serviceNanoseconds)) in the VM, "
            + "\(mean(values.resetNanoseconds)) resetting, \(String(format: "%.1f", Double(values.dirtyPages) / n)) dirty pages, "
            + "\(String(format: "%.1f", Double(values.exits) / n)) exits"
    }
}
