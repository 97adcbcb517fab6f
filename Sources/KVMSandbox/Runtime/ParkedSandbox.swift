import CHost
import Atomics
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A guest function of a parked VM's program, resolved once by name (`ParkedSandbox.function`).
public struct ParkedFunction: Sendable, Hashable {
    /// The ELF symbol.
    public let name: String
    /// Its address in the guest.
    public let address: UInt64

    /// The function `name` of `snapshot`'s program.
    init(named name: String, in snapshot: Snapshot) throws(SandboxError) {
        guard let symbol = snapshot.program.symbols.function(named: name) else { throw .noSuchFunction(name) }
        self.name = name
        address = snapshot.program.base &+ symbol.address
    }
}

/// A fork of a parked snapshot (`Snapshot.parked(_:)`) whose vCPU never leaves `KVM_RUN` between
/// requests: it waits in the host's idle stub, runs each posted call from the same clean state
/// (arguments, zeroed registers, the snapshot's x87/SSE state and flags, a fresh stack at the
/// arena's top) and answers through the parking page. The host then copies the arena, the
/// parking page and the mailbox back from the snapshot while the vCPU keeps running: a request
/// that writes only its arena and makes no exit-based host call costs no VM exit at all.
///
/// ```swift
/// let parked = try ParkedSandbox(snapshot: try snapshot.parked())
/// let add = try parked.function(named: "add")
/// let outcome = try parked.call(add, 1, 2)      // .returned(3)
/// ```
///
/// Anything else takes the slow path, exactly as a pool's `reset()`: a write outside the arena
/// (the page is made writable for the rest of the request, then copied back and protected
/// again), an exit-based host call, a fault, an exit or a timeout stop the vCPU, and the VM is
/// reset to the snapshot before the next request.
///
/// The guarantee: after every request, the next one starts with the memory of the snapshot
/// (arena, parking page and mailbox restored; nothing else writable without the slow path)
/// and the stub's entry state. A request that fakes its end (writes the parking page's `done`
/// itself and keeps running) can overlap later requests until the next verification
/// (`ParkingConfiguration.verificationInterval`) stops the vCPU, finds it outside the idle
/// loop and resets the VM. Calls are serialized: one request at a time per parked VM.
///
/// (@unchecked: requests are serialized by its own lock and the vCPU thread; shared pages are read and written with atomics or under that lock, as each property says.)
public final class ParkedSandbox: @unchecked Sendable {
    /// The parked snapshot it is a fork of.
    public let snapshot: Snapshot
    /// Per-request wall-clock limit (default: the snapshot configuration's `timeout`).
    public let timeout: Double?
    let sandbox: Sandbox
    let layout: ParkingLayout
    let monitor = ParkingMonitor()
    /// The parking page and the arena's header, shared with the running guest.
    private let page: UnsafeMutableRawPointer, arenaHeader: UnsafeMutableRawPointer
    private var thread = pthread_t()
    /// Whether `thread` was created (a failed `init` has none to join).
    private var threadStarted = false
    let state = HostMutex(Counters())
    let control = ConditionLock()
    /// Under `control`: what the vCPU thread is to do, and why it stopped.
    private var command = Command.run
    var stoppedOutcome: RunOutcome?
    /// Set by the vCPU thread when it left the run loop (read without the lock).
    private let stopped = ManagedAtomic<Bool>(false)
    /// The vCPU thread sleeps (the idle stub's exit); a poster must wake it.
    private let sleeping = ManagedAtomic<Bool>(false)
    /// A request is posted and not answered.
    private let outstanding = ManagedAtomic<Bool>(false)
    /// The VM is being torn down (the vCPU thread stops spinning for a resume).
    private let quitting = ManagedAtomic<Bool>(false)

    private enum Command { case run, hold, quit }

    /// What a parked VM did so far.
    public struct Statistics: Sendable, Equatable {
        /// Requests served.
        public var requests = 0
        /// Requests followed by a reset without exit (arena, parking page, mailbox copied back).
        public var fastResets = 0
        /// Resets that stopped the vCPU and restored the VM through KVM's dirty log.
        public var slowResets = 0
        /// Verifications that stopped the vCPU to check it was in the idle loop; how many failed.
        public var verifications = 0, failedVerifications = 0
        /// Pages made writable after a write fault outside the arena.
        public var pagesUnprotected = 0
        /// Of those, the pages now kept writable (copied back after every request).
        public var pagesKeptWritable = 0
        /// VM exits of the vCPU (the idle stub's sleeps included).
        public var exits = 0

        /// Adds what happened between two readings of one VM's statistics (`pagesKeptWritable`,
        /// a level rather than a count, takes the later reading's value).
        mutating func add(_ after: Statistics, minus before: Statistics) {
            requests += after.requests - before.requests
            fastResets += after.fastResets - before.fastResets
            slowResets += after.slowResets - before.slowResets
            verifications += after.verifications - before.verifications
            failedVerifications += after.failedVerifications - before.failedVerifications
            pagesUnprotected += after.pagesUnprotected - before.pagesUnprotected
            pagesKeptWritable = after.pagesKeptWritable
            exits += after.exits &- before.exits
        }
    }

    struct Counters {
        var statistics = Statistics()
        var sinceVerification = 0
        var broken: SandboxError?
    }

    /// What the VM did so far.
    public var statistics: Statistics {
        var statistics = state.withLock { $0.statistics }
        statistics.exits = monitor.exits.load(ordering: .relaxed)
        statistics.pagesUnprotected += monitor.unprotectedPages.load(ordering: .relaxed)
        statistics.pagesKeptWritable = monitor.keptPages.withLock { $0.count }
        return statistics
    }

    /// A parked VM from `snapshot` (which must come from `Snapshot.parked(_:)`), with its vCPU
    /// thread started and waiting for requests. `setUp` registers host calls on the fork.
    public init(snapshot: Snapshot, tracking: DirtyTracking? = nil, timeout: Double? = nil,
                setUp: (Sandbox) throws -> Void = { _ in }) throws {
        guard let layout = snapshot.parking else {
            throw SandboxError.invalidConfiguration("a parked VM needs a parked snapshot (Snapshot.parked(_:))")
        }
        self.snapshot = snapshot
        self.layout = layout
        let timeout = timeout ?? snapshot.configuration.timeout
        guard timeout.map({ $0 > 0 && $0.isFinite }) ?? true else {
            throw SandboxError.invalidConfiguration("the timeout must be a positive number of seconds")
        }
        self.timeout = timeout
        sandbox = try snapshot.fork(tracking: tracking)
        try setUp(sandbox)
        sandbox.parkingMonitor = monitor
        _ = sandbox.exitlessServer  // made here, before two threads share it
        page = sandbox.memory.pagePointer(layout.parkingPage)
        arenaHeader = sandbox.memory.pagePointer(layout.arenaPhysical)
        _ = VCPUInterrupter.signal  // the kick's handler, before any kick
        let context = Unmanaged.passUnretained(self).toOpaque()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<ParkedSandbox>.fromOpaque(context!).takeUnretainedValue().vcpuLoop()
            return nil
        }, context)
        guard result == 0 else { throw SandboxError.hostResource(operation: "pthread_create", errno: Errno(rawValue: result)) }
        threadStarted = true
    }

    deinit {
        guard threadStarted else { return }
        quitting.store(true, ordering: .sequentiallyConsistent)
        control.withLock {
            command = .quit
            monitor.stopRequested.store(true, ordering: .sequentiallyConsistent)
            sandbox.vcpu.interrupter.interrupt(thread: thread)
            control.broadcast()
        }
        pthread_join(thread, nil)
    }

    /// The program's function `name` (an ELF symbol), for `call`.
    public func function(named name: String) throws(SandboxError) -> ParkedFunction {
        try ParkedFunction(named: name, in: snapshot)
    }

    /// Whether a reset failed: the VM serves no more requests (every call throws).
    public var isBroken: Bool { state.withLock { $0.broken != nil } }

    /// Calls `function` with up to six integer arguments; see `call(_:arguments:)`.
    public func call(_ function: ParkedFunction, _ arguments: UInt64...) throws(SandboxError) -> RunOutcome {
        try call(function, arguments: arguments.map(GuestArgument.integer))
    }

    /// Runs `function` with `arguments` (integers as they are; bytes copied into the request
    /// heap at the bottom of the arena, passed as pointers) and resets the VM for the next
    /// request. `.returned(rax)` when it returned; otherwise the outcome that stopped it (fault,
    /// timeout, exit, ...), after which the VM was reset the slow way and serves on.
    public func call(_ function: ParkedFunction, arguments: [GuestArgument]) throws(SandboxError) -> RunOutcome {
        guard arguments.count <= 6 else { throw .invalidArguments("\(arguments.count) arguments; at most 6 go in registers") }
        return try state.withLock { counters throws(SandboxError) -> RunOutcome in
            if let broken = counters.broken { throw broken }
            return try serve(function, arguments, &counters)
        }
    }

    private func serve(_ function: ParkedFunction, _ arguments: [GuestArgument], _ counters: inout Counters) throws(SandboxError) -> RunOutcome {
        // The vCPU stopped between requests (a request that faked its end and then faulted).
        if stopped.load(ordering: .acquiring) { try slowReset(&counters) }
        var values = [UInt64](repeating: 0, count: 6)
        var heapUsed: UInt64 = 0
        let heapRoom = layout.configuration.arenaSize / 2
        for (index, argument) in arguments.enumerated() {
            switch argument {
            case .integer(let value): values[index] = value
            case .bytes(let bytes):
                let start = (heapUsed + 15) & ~15
                guard UInt64(bytes.count) <= heapRoom, start + UInt64(bytes.count) <= heapRoom else {
                    throw .invalidArguments("\(bytes.count) bytes do not fit in the request heap (half the \(layout.configuration.arenaSize >> 10) KiB arena)")
                }
                let address = GuestLayout.arenaBase + ParkingStub.heapStart + start
                do { try sandbox.space.hostWrite(bytes, at: address) } catch { preconditionFailure("the arena is mapped") }
                values[index] = address
                heapUsed = start + UInt64(bytes.count)
            }
        }
        if heapUsed > 0 { arenaWord(ParkingStub.heapUsed).store(heapUsed, ordering: .relaxed) }
        for (index, value) in values.enumerated() { word(ParkingStub.arguments + 8 * UInt64(index)).store(value, ordering: .relaxed) }
        word(ParkingStub.function).store(function.address, ordering: .relaxed)
        word(ParkingStub.posted).store(1, ordering: .sequentiallyConsistent)
        outstanding.store(true, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) { control.withLock { control.broadcast() } }
        counters.statistics.requests += 1

        let outcome = waitForAnswer()
        outstanding.store(false, ordering: .sequentiallyConsistent)
        guard let outcome else {
            let result = arenaWord(ParkingStub.result).load(ordering: .acquiring)
            try finishRequest(&counters)
            return .returned(result)
        }
        try slowReset(&counters)
        return outcome
    }

    /// Spins on the parking page until the guest answers (nil), the vCPU stops (its outcome)
    /// or the request times out (the vCPU is stopped; `.timedOut`).
    private func waitForAnswer() -> RunOutcome? {
        let started = monotonicNanoseconds()
        let limit = timeout.map { UInt64(min($0, 1e9) * 1e9) }
        let done = arenaWord(ParkingStub.done)
        var spins = 0
        while true {
            if done.load(ordering: .acquiring) == 1 { return nil }
            if stopped.load(ordering: .acquiring) { return control.withLock { stoppedOutcome } ?? .hostFailure("the parked vCPU stopped") }
            spins &+= 1
            guard spins & 63 == 0 else { chost_cpu_relax(); continue }
            let elapsed = monotonicNanoseconds() &- started
            if let limit, elapsed > limit {
                let stoppedWith = stopVCPU()
                if case .ready = stoppedWith {
                    return .timedOut(seconds: timeout ?? 0, rip: sandbox.vcpu.registers.instructionPointer)
                }
                return stoppedWith
            }
            // A long request: give the core away between looks (it may be the vCPU's).
            if elapsed > 200_000 { sched_yield() }
        }
    }

    /// After an answer: a fast reset, unless an exit may have changed other state (then a slow
    /// one), and every `verificationInterval` fast resets a verification.
    private func finishRequest(_ counters: inout Counters) throws(SandboxError) {
        if monitor.tainted.load(ordering: .sequentiallyConsistent) || stopped.load(ordering: .acquiring) {
            try slowReset(&counters)
            return
        }
        fastReset()
        counters.statistics.fastResets += 1
        if snapshot.configuration.verifyResets {
            // Paranoid resets: every fast reset is checked with the vCPU stopped (stopped inside
            // a CPL 0 stub, it has an exit on its way, and tainted since the answer, it needs
            // the slow reset anyway: that one is checked by `reset()`).
            _ = stopVCPU()
            if stoppedInHostStub || monitor.tainted.load(ordering: .sequentiallyConsistent) {
                try slowReset(&counters)
                return
            }
            let differences = try checkedDifferences()
            guard differences.isEmpty else {
                counters.broken = .resetVerificationFailed(differences)
                throw .resetVerificationFailed(differences)
            }
            resumeVCPU()
        }
        counters.sinceVerification += 1
        let interval = layout.configuration.verificationInterval
        guard interval > 0, counters.sinceVerification >= interval else { return }
        counters.sinceVerification = 0
        counters.statistics.verifications += 1
        _ = stopVCPU()
        let parked = ParkingStub.idleRange.contains(sandbox.vcpu.registers.instructionPointer)
        if parked, !monitor.tainted.load(ordering: .sequentiallyConsistent) {
            // Whatever ran since the last answer is over: restore once more with the vCPU stopped.
            fastReset()
            resumeVCPU()
        } else {
            // Inside a CPL 0 stub (hardware KVM: an exception or the syscall entry, on its way
            // to an exit) is not proof of anything; elsewhere, the guest did not go idle.
            if !parked, !stoppedInHostStub { counters.statistics.failedVerifications += 1 }
            try slowReset(&counters)
        }
    }

    /// Copies back what a request may write without an exit: the arena and the mailbox; and
    /// clears the request (the function first, then posted, so the idle stub never starts one:
    /// should a guest have set `done` to make the words match, it calls address 0 and faults).
    private func fastReset() {
        word(ParkingStub.function).store(0, ordering: .sequentiallyConsistent)
        word(ParkingStub.posted).store(0, ordering: .sequentiallyConsistent)
        for index in UInt64(0)..<6 { word(ParkingStub.arguments + 8 * index).store(0, ordering: .relaxed) }
        let memory = sandbox.memory
        memory.restoreRange(layout.arenaPhysical, count: layout.configuration.arenaSize)
        monitor.keptPages.withLock { pages in
            for page in pages { memory.restorePage(page.physical >> PageSize.shift) }
        }
        let mailboxPage = sandbox.mailboxPhysical >> PageSize.shift
        sandbox.exitlessServer.rewind { memory.restorePage(mailboxPage) }
    }

    /// Stops the vCPU, resets the VM to the snapshot through the dirty log, and lets it run again.
    private func slowReset(_ counters: inout Counters) throws(SandboxError) {
        _ = stopVCPU()
        counters.statistics.pagesUnprotected += monitor.unprotectedPages.exchange(0, ordering: .relaxed)
        // The reset protects them all again (and drops their translations).
        monitor.keptPages.withLock { $0.removeAll() }
        // The host wrote the parking page through its own pointer: the reset must copy it back.
        sandbox.memory.noteHostWrite(layout.parkingPage, Int(PageSize.bytes))
        do {
            try sandbox.reset()
        } catch {
            // The VM is in no known state: it serves no more requests.
            counters.broken = error
            throw error
        }
        counters.statistics.slowResets += 1
        counters.sinceVerification = 0
        resumeVCPU()
    }

    /// Brings the vCPU thread out of the run loop (if it is not already) and returns the
    /// outcome it stopped with (`.ready` when stopped on request).
    func stopVCPU() -> RunOutcome {
        control.withLock {
            guard !stopped.load(ordering: .acquiring) else { return }
            monitor.stopRequested.store(true, ordering: .sequentiallyConsistent)
            sandbox.vcpu.interrupter.interrupt(thread: thread)
            control.broadcast()
        }
        // The vCPU thread answers within an exit's time: spin for it rather than sleep (a
        // wake-up costs more than the exit here).
        Self.spin(until: { stopped.load(ordering: .acquiring) })
        return control.withLock {
            while !stopped.load(ordering: .acquiring) { control.wait() }
            return stoppedOutcome ?? .ready
        }
    }

    /// Spins (with `pause`) until `done` or about 1 ms has passed.
    private static func spin(until done: () -> Bool) {
        let started = monotonicNanoseconds()
        var spins = 0
        while !done() {
            spins &+= 1
            if spins & 255 == 0, monotonicNanoseconds() &- started > 1_000_000 { return }
            chost_cpu_relax()
        }
    }

    /// Lets the stopped vCPU thread run the guest again (from wherever it stopped), dropping the
    /// stop request and, unless told otherwise, the taint.
    func resumeVCPU(clearingTaint: Bool = true) {
        control.withLock {
            monitor.stopRequested.store(false, ordering: .sequentiallyConsistent)
            if clearingTaint { monitor.tainted.store(false, ordering: .sequentiallyConsistent) }
            sandbox.vcpu.clearImmediateExit()
            stoppedOutcome = nil
            stopped.store(false, ordering: .releasing)
            command = .run
            control.broadcast()
        }
    }

    /// The vCPU thread: runs the guest until the idle stub sleeps (then waits for a request),
    /// or until it stops for good (then waits to be resumed or told to quit).
    private func vcpuLoop() {
        _ = VCPUInterrupter.unblockSignalOnThisThread()
        control.lock()
        while true {
            while command == .hold { control.wait() }
            if command == .quit { break }
            control.unlock()
            let outcome: RunOutcome
            do { outcome = try sandbox.runLoop(until: .parked) } catch { outcome = .hostFailure("\(error)") }
            control.lock()
            if case .ready = outcome, command == .run, !monitor.stopRequested.load(ordering: .acquiring) {
                sleeping.store(true, ordering: .sequentiallyConsistent)
                while !outstanding.load(ordering: .sequentiallyConsistent), !monitor.stopRequested.load(ordering: .acquiring),
                      command == .run {
                    control.wait()
                }
                sleeping.store(false, ordering: .sequentiallyConsistent)
                continue
            }
            stoppedOutcome = outcome
            if command == .run { command = .hold }
            stopped.store(true, ordering: .releasing)
            control.broadcast()
            // A stop is usually a slow reset, over in tens of microseconds: spin for the resume.
            control.unlock()
            Self.spin(until: { !stopped.load(ordering: .acquiring) || quitting.load(ordering: .relaxed) })
            control.lock()
        }
        control.unlock()
    }

    /// A 64-bit word of the parking page, shared with the running guest.
    private func word(_ offset: UInt64) -> UnsafeAtomic<UInt64> {
        // SAFETY: offset < 64, inside the page, which lives as long as the sandbox's memory.
        UnsafeAtomic(at: (page + Int(offset)).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    /// A 64-bit word of the arena's header, shared with the running guest.
    private func arenaWord(_ offset: UInt64) -> UnsafeAtomic<UInt64> {
        // SAFETY: offset < 24, inside the arena's first page, alive as long as the memory.
        UnsafeAtomic(at: (arenaHeader + Int(offset)).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
}
