#if canImport(Glibc)
import Glibc
#endif

/// Guest threads on the one vCPU: switching means saving the running thread's general, special
/// and x87/SSE/AVX registers and loading another's. A thread runs until it blocks (futex,
/// sleep), yields, exits, or its time slice ends (the watchdog's kick, so a spinning thread
/// cannot starve the others). The thread table is the Linux personality's state, so snapshots,
/// forks and resets cover every thread.
extension Sandbox {
    /// How long a thread runs before another runnable one gets the vCPU.
    static let timeSlice: UInt64 = 10_000_000

    /// Carries out what a threading call asked for. Returns the outcome when the run ends
    /// (deadlock, the run's deadline while every thread waits), nil to go on running.
    func perform(_ action: ThreadAction) throws(KVMError) -> RunOutcome? {
        switch action {
        case .spawn(let tid, let stack, let tls):
            // The new thread starts where the caller is (back from `syscall`), with rax 0, its
            // own stack and TLS, and a copy of the caller's x87/SSE/AVX state.
            var child = vcpu.registers
            child.callResult = 0
            child.stackPointer = stack
            var special = try vcpu.specialRegisters()
            if let tls { special.fs.base = tls }
            let floatingPoint = try vcpu.floatingPointState(system.stateCapabilities)
            if let index = linux.state.threads.firstIndex(where: { $0.tid == tid }) {
                linux.state.threads[index].registers = child
                linux.state.threads[index].specialRegisters = RawBytes(special)
                linux.state.threads[index].floatingPoint = floatingPoint
                linux.state.threads[index].resultPending = false
            }
            vcpu.modifyRegisters { $0.callResult = UInt64(tid) }
            // The creator's slice starts now if it was alone until now.
            if linux.state.threads.count == 2 { sliceStarted = monotonicNanoseconds() }
            return nil
        case .yield:
            linux.state.threads[linux.state.currentThread].result = 0
            try saveRunningThread(resultPending: true)
            return try runNextThread()
        case .block:
            try saveRunningThread(resultPending: true)
            return try runNextThread()
        case .exit:
            // The thread's record is gone already; its vCPU state is simply replaced.
            return try runNextThread(exited: true)
        case .signalReturn:
            return try returnFromSignal()
        }
    }

    /// Saves the vCPU into the running thread's record. `resultPending`: it stopped in a system
    /// call whose result (`result`) goes into rax when it runs again.
    func saveRunningThread(resultPending: Bool) throws(KVMError) {
        let index = linux.state.currentThread
        linux.state.threads[index].registers = vcpu.registers
        linux.state.threads[index].specialRegisters = RawBytes(try vcpu.specialRegisters())
        linux.state.threads[index].floatingPoint = try vcpu.floatingPointState(system.stateCapabilities)
        linux.state.threads[index].resultPending = resultPending
    }

    /// Picks the next runnable thread round-robin after the running one (or, when it exited,
    /// from its old place) and loads it into the vCPU. When none can run: waits on the host for
    /// the earliest deadline among them (a sleep, a futex timeout), or reports a deadlock.
    func runNextThread(exited: Bool = false) throws(KVMError) -> RunOutcome? {
        while true {
            expireDeadlines(now: monotonicNanoseconds())
            let threads = linux.state.threads
            let start = exited ? linux.state.currentThread : linux.state.currentThread + 1
            for offset in 0..<threads.count {
                let index = (start + offset) % threads.count
                if threads[index].wait == .runnable, threads[index].registers != nil {
                    try load(thread: index)
                    return nil
                }
            }
            guard let earliest = threads.compactMap(\.deadline).min() else {
                let waits = threads.compactMap { thread -> ThreadWait? in
                    guard case .futex(let address, _) = thread.wait else { return nil }
                    return ThreadWait(thread: thread.tid, futex: address)
                }
                return .deadlocked(waits: waits)
            }
            // Nothing to run until `earliest`: sleep in slices, ending early if the run's
            // deadline kicks the vCPU.
            while monotonicNanoseconds() < earliest {
                if vcpu.interrupter.isInterrupted {
                    if let deadline = runDeadline, Watchdog.shared.fired(deadline) {
                        return .timedOut(seconds: effectiveTimeout ?? 0, rip: vcpu.registers.instructionPointer)
                    }
                    if currentStop != .parked, interruptHandle.takeRequest() { return .interrupted(rip: vcpu.registers.instructionPointer) }
                    vcpu.clearImmediateExit()
                }
                // Waiting on the host's descriptors (connections, a host stdin) as well: data
                // arriving wakes the threads waiting for I/O at once.
                let pause = min(earliest &- min(earliest, monotonicNanoseconds()), 50_000_000)
                if linux.waitForHostDescriptors(nanoseconds: pause) {
                    linux.wakeReaders()
                    break
                }
            }
        }
    }

    /// Ends the waits whose deadlines have passed: a sleep returns 0, a futex wait `ETIMEDOUT`,
    /// an I/O wait runs its call again (which returns 0 once its own timeout has passed).
    func expireDeadlines(now: UInt64) {
        for index in linux.state.threads.indices {
            guard let deadline = linux.state.threads[index].deadline, deadline <= now else { continue }
            if linux.state.threads[index].wait == .io {
                linux.state.threads[index].restart = true
                linux.state.threads[index].rewind = true
            }
            linux.state.threads[index].result = linux.state.threads[index].wait == .sleep ? 0 : -Int64(ETIMEDOUT)
            linux.state.threads[index].wait = .runnable
            linux.state.threads[index].deadline = nil
        }
    }

    /// Loads thread `index`'s saved state into the vCPU and makes it the running one.
    func load(thread index: Int) throws(KVMError) {
        let thread = linux.state.threads[index]
        guard var registers = thread.registers, var special = thread.specialRegisters?.value, let floatingPoint = thread.floatingPoint else {
            return
        }
        if thread.rewind {
            // Back onto its `syscall` instruction (rax still holds the call's number), as user code.
            registers = registers.restartingSystemCall
            if isInSyscallEntry(thread.registers?.instructionPointer ?? 0) { special = X86CPUState.userMode(special) }
        } else if thread.resultPending {
            registers.callResult = UInt64(bitPattern: thread.result)
        }
        vcpu.modifyRegisters { $0 = registers }
        try vcpu.setSpecialRegisters(special)
        try vcpu.setFloatingPointState(floatingPoint)
        builtins.setFSBase(special.fs.base)
        linux.state.threads[index].rewind = false
        linux.state.threads[index].resultPending = false
        linux.state.threads[index].registers = nil
        linux.state.threads[index].specialRegisters = nil
        linux.state.threads[index].floatingPoint = nil
        linux.state.currentThread = index
        sliceStarted = monotonicNanoseconds()
    }

    /// With several threads, how long the running one may still run before the watchdog kicks
    /// the vCPU: the rest of its slice, or less when a waiting thread's deadline comes first.
    /// Nil with one thread (no kicks, no cost).
    func timeSliceLeft() -> Double? {
        let alarm = linux.state.alarmDeadline
        guard linux.state.threads.count > 1 || alarm != nil else { return nil }
        let now = monotonicNanoseconds()
        var end = linux.state.threads.count > 1 ? sliceStarted &+ Self.timeSlice : UInt64.max
        if let alarm { end = min(end, alarm) }
        if let deadline = linux.state.threads.compactMap(\.deadline).min() { end = min(end, deadline) }
        return Double(max(end, now &+ 100_000) &- now) / 1e9
    }

    /// After an exit in a multi-threaded guest: when the slice is over (or a waiting thread's
    /// deadline passed) and another thread can run, switch to it.
    func preemptIfDue() throws(KVMError) -> RunOutcome? {
        guard linux.state.threads.count > 1 else { return nil }
        let now = monotonicNanoseconds()
        let deadlinePassed = linux.state.threads.contains { ($0.deadline ?? .max) <= now }
        guard now &- sliceStarted >= Self.timeSlice || deadlinePassed else { return nil }
        expireDeadlines(now: now)
        let others = linux.state.threads.indices.contains {
            $0 != linux.state.currentThread && linux.state.threads[$0].wait == .runnable
        }
        guard others else {
            sliceStarted = now
            return nil
        }
        try saveRunningThread(resultPending: false)
        return try runNextThread()
    }
}
