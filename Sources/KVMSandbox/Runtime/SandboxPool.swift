import Synchronization

/// Forks of one snapshot kept ready for requests: a request takes a VM, uses it, and the pool
/// resets it to the snapshot and keeps it for the next one. Safe to use from many tasks at once;
/// each VM serves one request at a time, and at most `capacity` VMs exist.
///
/// ```swift
/// let pool = try SandboxPool(snapshot: snapshot, capacity: 4) { vm in try vm.register(0x1000, handler) }
/// let outcome = try await pool.withSandbox { vm in try vm.call("handle", .bytes(request), 16) }
/// ```
/// The body runs on the calling task's thread and blocks it while the guest runs (as any
/// synchronous work does), so a capacity near the number of cores keeps the thread pool moving.
public final class SandboxPool: Sendable {
    /// The snapshot every VM is forked from.
    public let snapshot: Snapshot
    /// The most VMs that exist at once; more concurrent requests wait.
    public let capacity: Int
    private let setUp: @Sendable (Sandbox) throws -> Void
    /// How the forks track the pages they dirty (nil: the fastest this KVM has).
    public let tracking: DirtyTracking?
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var idle: [PooledVM] = []
        var count = 0
        var waiters: [CheckedContinuation<PooledVM?, Never>] = []
    }

    /// A sandbox handed between tasks, used by one at a time.
    private final class PooledVM: @unchecked Sendable {
        let sandbox: Sandbox
        init(_ sandbox: Sandbox) { self.sandbox = sandbox }
    }

    /// A pool of up to `capacity` forks of `snapshot`, `prefork` of them created now. `setUp` runs
    /// on each new fork (register its host calls there).
    public init(snapshot: Snapshot, capacity: Int, prefork: Int = 0, tracking: DirtyTracking? = nil,
                setUp: @escaping @Sendable (Sandbox) throws -> Void = { _ in }) throws {
        self.tracking = tracking
        guard capacity > 0, (0...capacity).contains(prefork) else {
            throw SandboxError.invalidConfiguration("pool capacity must be positive and prefork within it")
        }
        self.snapshot = snapshot
        self.capacity = capacity
        self.setUp = setUp
        let ready = try (0..<prefork).map { _ in PooledVM(try Self.makeFork(snapshot, tracking, setUp)) }
        state.withLock { $0.idle = ready; $0.count = ready.count }
    }

    private static func makeFork(_ snapshot: Snapshot, _ tracking: DirtyTracking?, _ setUp: (Sandbox) throws -> Void) throws -> Sandbox {
        let vm = try snapshot.fork(tracking: tracking)
        try setUp(vm)
        return vm
    }

    /// VMs that exist now, and how many of them are idle.
    public var counts: (total: Int, idle: Int) { state.withLock { ($0.count, $0.idle.count) } }

    /// Runs `body` with a VM of its own, paused at the snapshot, then resets the VM and keeps it.
    /// Waits while `capacity` VMs are busy. A VM whose reset fails is dropped, never reused.
    public func withSandbox<R: Sendable>(_ body: (Sandbox) throws -> R) async throws -> R {
        let vm = try await take()
        defer { giveBack(vm) }
        return try body(vm.sandbox)
    }

    private func take() async throws -> PooledVM {
        enum Next { case use(PooledVM), create, wait }
        let next: Next = state.withLock { state in
            if let vm = state.idle.popLast() { return .use(vm) }
            if state.count < capacity { state.count += 1; return .create }
            return .wait
        }
        switch next {
        case .use(let vm): return vm
        case .create:
            do { return PooledVM(try Self.makeFork(snapshot, tracking, setUp)) } catch {
                release(nil)
                throw error
            }
        case .wait:
            let handed = await withCheckedContinuation { continuation in
                let immediate: PooledVM?? = state.withLock { state in
                    if let vm = state.idle.popLast() { return .some(vm) }
                    if state.count < capacity { state.count += 1; return .some(nil) }
                    state.waiters.append(continuation)
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
            // nil: a slot freed up (a VM was dropped); make a new fork for it.
            if let handed { return handed }
            do { return PooledVM(try Self.makeFork(snapshot, tracking, setUp)) } catch {
                release(nil)
                throw error
            }
        }
    }

    private func giveBack(_ vm: PooledVM) {
        do {
            try vm.sandbox.reset()
            release(vm)
        } catch {
            release(nil)
        }
    }

    /// Hands `vm` (or, for nil, a free slot) to a waiter, or keeps it idle.
    private func release(_ vm: PooledVM?) {
        let waiter: CheckedContinuation<PooledVM?, Never>? = state.withLock { state in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            if let vm { state.idle.append(vm) } else { state.count -= 1 }
            return nil
        }
        waiter?.resume(returning: vm)
    }
}
