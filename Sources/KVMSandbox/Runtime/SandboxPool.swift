import Dispatch

/// Forks of one snapshot kept ready for requests: a request takes a VM, uses it, and the pool
/// resets it to the snapshot and keeps it for the next one. Safe to use from many tasks at once;
/// each VM serves one request at a time, and at most `capacity` VMs exist.
///
/// ```swift
/// let pool = try SandboxPool(snapshot: snapshot, capacity: 4) { vm in try vm.register(0x1000, handler) }
/// let outcome = try await pool.withSandbox { vm in try vm.call("handle", .bytes(request), 16) }
/// ```
/// The body runs on the VM's own host thread while the calling task is suspended, so Swift's
/// cooperative threads never wait for a guest; cancelling the task interrupts the guest.
/// `statistics` counts what the pool did. For requests without VM exits, see `ParkedPool`.
public final class SandboxPool: Sendable {
    /// The snapshot every VM is forked from.
    public let snapshot: Snapshot
    /// The most VMs that exist at once; more concurrent requests wait.
    public var capacity: Int { pool.capacity }
    /// How the forks track the pages they dirty (nil: the fastest this KVM has).
    public let tracking: DirtyTracking?
    private let pool: LeasePool<PooledVM>
    private let totals = HostMutex(Statistics())

    /// What a pool did so far, over all its VMs.
    public struct Statistics: Sendable, Equatable {
        /// Requests served (`withSandbox` bodies run).
        public var requests = 0
        /// VM exits during those requests.
        public var exits = 0
        /// Pages the resets after them copied back from the snapshot.
        public var pagesRestored = 0
        /// Nanoseconds those resets took, in all.
        public var resetNanoseconds: UInt64 = 0
        /// VMs dropped because their reset failed.
        public var droppedVMs = 0
        /// No requests yet.
        public init() {}
    }

    /// What the pool did so far.
    public var statistics: Statistics { totals.withLock { $0 } }

    /// A sandbox handed between tasks, used by one at a time.
    ///
    /// (@unchecked: a lease: the pool hands it to one task at a time, and only that task touches the sandbox.)
    private final class PooledVM: @unchecked Sendable {
        let sandbox: Sandbox
        init(_ sandbox: Sandbox) { self.sandbox = sandbox }
    }

    /// A pool of up to `capacity` forks of `snapshot`, `prefork` of them created now. `setUp` runs
    /// on each new fork (register its host calls there).
    public init(snapshot: Snapshot, capacity: Int, prefork: Int = 0, tracking: DirtyTracking? = nil,
                setUp: @escaping @Sendable (Sandbox) throws -> Void = { _ in }) throws {
        self.snapshot = snapshot
        self.tracking = tracking
        pool = try LeasePool(capacity: capacity, prefork: prefork) {
            let vm = try snapshot.fork(tracking: tracking)
            try setUp(vm)
            return PooledVM(vm)
        }
    }

    /// VMs that exist now, and how many of them are idle.
    public var counts: (total: Int, idle: Int) { pool.counts }

    /// Runs `body` with a VM of its own, paused at the snapshot, then resets the VM and keeps it.
    /// Waits while `capacity` VMs are busy. A VM whose reset fails is dropped, never reused.
    public func withSandbox<R: Sendable>(_ body: @Sendable (Sandbox) throws -> R) async throws -> R {
        try await withSandbox(body, afterReset: { _ in })
    }

    /// What the reset after a request did.
    public struct ResetReport: Sendable, Equatable {
        /// Pages copied back from the snapshot (what the request dirtied).
        public var pages = 0
        /// Nanoseconds the reset took.
        public var nanoseconds: UInt64 = 0
        /// False when the reset failed and the VM was dropped.
        public var succeeded = true
        /// A report of no reset yet.
        public init() {}
    }

    /// As `withSandbox(_:)`, and tells `afterReset` what the reset that followed `body` did
    /// (before this returns; the reset is part of the request's time).
    ///
    /// `body` and the reset run on a host thread of their own: the calling task suspends and
    /// its thread serves other tasks meanwhile. Cancelling the task interrupts the guest (the
    /// run or call in progress ends with `RunOutcome.interrupted`); the VM is reset as always.
    public func withSandbox<R: Sendable>(_ body: @Sendable (Sandbox) throws -> R, afterReset: (ResetReport) -> Void) async throws -> R {
        let totals = self.totals
        let (result, report) = try await pool.lease({ vm in
            let exitsBefore = vm.sandbox.statistics.exits
            let result = Result { try body(vm.sandbox) }
            let exits = vm.sandbox.statistics.exits &- exitsBefore
            let started = DispatchTime.now().uptimeNanoseconds
            var report = ResetReport()
            report.succeeded = (try? vm.sandbox.reset()) != nil
            report.nanoseconds = DispatchTime.now().uptimeNanoseconds &- started
            report.pages = vm.sandbox.statistics.pagesRestoredByLastReset
            totals.withLock { totals in
                totals.requests += 1
                totals.exits += exits
                totals.pagesRestored += report.pages
                totals.resetNanoseconds &+= report.nanoseconds
                if !report.succeeded { totals.droppedVMs += 1 }
            }
            return (result: (result, report), keep: report.succeeded)
        }, interrupt: { vm in vm.sandbox.interruptHandle.interrupt() })
        afterReset(report)
        return try result.get()
    }
}
