/// Parked VMs (`ParkedSandbox`) of one parked snapshot, for requests without VM exits from many
/// tasks at once: a request takes an idle VM, calls its function, and gives the VM back (it
/// resets itself). At most `capacity` VMs exist; N VMs for N cores is the usual choice.
///
/// ```swift
/// let pool = try ParkedPool(snapshot: try snapshot.parked(), capacity: 4)
/// let add = try pool.function(named: "add")
/// let outcome = try await pool.call(add, 1, 2)      // .returned(3)
/// ```
///
/// Threads: every VM has its vCPU thread; no other host thread polls. A request is handed to
/// the VM's host thread (the calling task is suspended meanwhile), which spins on the VM's
/// parking page until the answer (and gives its core away with `sched_yield` once a request
/// runs longer than 0.2 ms). An idle VM's vCPU polls for
/// `ParkingConfiguration.idleSpin` rounds (~0.4 ms) after its last request, then sleeps in
/// the host (one exit), so an idle pool uses no CPU; the next request wakes it (its first
/// request after a sleep pays that wake-up).
public final class ParkedPool: Sendable {
    /// The parked snapshot every VM is forked from.
    public let snapshot: Snapshot
    /// The most VMs that exist at once; more concurrent requests wait.
    public var capacity: Int { pool.capacity }
    private let pool: LeasePool<ParkedSandbox>
    private let totals = HostMutex(ParkedSandbox.Statistics())

    /// What the pool's VMs did so far (requests, fast and slow resets, verifications, pages
    /// unprotected, exits), summed over every VM it has had. A request that takes the slow
    /// reset every time shows here as `slowResets` growing with `requests`.
    public var statistics: ParkedSandbox.Statistics { totals.withLock { $0 } }

    /// A pool of up to `capacity` parked VMs of `snapshot` (from `Snapshot.parked(_:)`),
    /// `prefork` of them started now. `setUp` registers host calls on each new fork.
    public init(snapshot: Snapshot, capacity: Int, prefork: Int = 0, timeout: Double? = nil,
                setUp: @escaping @Sendable (Sandbox) throws -> Void = { _ in }) throws {
        guard snapshot.isParked else { throw SandboxError.invalidConfiguration("a parked pool needs a parked snapshot (Snapshot.parked(_:))") }
        self.snapshot = snapshot
        pool = try LeasePool(capacity: capacity, prefork: prefork) {
            try ParkedSandbox(snapshot: snapshot, timeout: timeout, setUp: setUp)
        }
    }

    /// VMs that exist now, and how many of them are idle.
    public var counts: (total: Int, idle: Int) { pool.counts }

    /// The program's function `name`, for `call`.
    public func function(named name: String) throws(SandboxError) -> ParkedFunction {
        try ParkedFunction(named: name, in: snapshot)
    }

    /// Calls `function` with integer arguments on an idle VM; see `ParkedSandbox.call`.
    public func call(_ function: ParkedFunction, _ arguments: UInt64...) async throws -> RunOutcome {
        try await call(function, arguments: arguments.map(GuestArgument.integer))
    }

    /// Calls `function` on an idle VM (waiting while `capacity` VMs are busy). A VM that can
    /// no longer be reset is dropped, never reused. The wait for the VM's answer happens on a
    /// host thread, never on the caller's (cooperative) one.
    public func call(_ function: ParkedFunction, arguments: [GuestArgument]) async throws -> RunOutcome {
        let totals = self.totals
        return try await pool.lease({ vm in
            let before = vm.statistics
            let result = Result { try vm.call(function, arguments: arguments) }
            let after = vm.statistics
            totals.withLock { $0.add(after, minus: before) }
            return (result: result, keep: !vm.isBroken)
        }).get()
    }
}
