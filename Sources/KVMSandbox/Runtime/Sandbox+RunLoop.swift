import Atomics
#if canImport(Glibc)
import Glibc
#endif

/// The run loop: enter the guest, turn each `GuestEvent` into what it means (a host call, an
/// exception, a kick, a fault of the ABI), then schedule threads and deliver signals before
/// the next entry. Shared by `run`, `runUntilReady`, guest function calls and parked VMs.
extension Sandbox {
    /// The run loop shared by `run`, `runUntilReady` and guest function calls.
    func runLoop(until stop: StopCondition) throws(SandboxError) -> RunOutcome {
        switch phase {
        case .finished: throw .alreadyFinished
        case .running: throw .alreadyRunning
        case .notStarted, .paused: break
        }
        // A fresh sandbox's first run: what loading took counts against the timeout too.
        var loading = 0.0
        if case .notStarted = phase, let loadStarted { loading = Double(monotonicNanoseconds() &- loadStarted) / 1e9 }
        // The poller serves embedder host calls (when there are handlers) and Linux system
        // calls the exitless `syscall` stub posts (PVM).
        let postsHostCalls = configuration.hostCallTransport.resolved == .exitless && !handlers.isEmpty
        let postsSystemCalls = syscallStubPosts && configuration.systemCallTransport.resolvedForSystemCalls == .exitless
        // The process-wide threads this run needs, before anything is armed: a host that will
        // not give them fails this run (`hostResource`), not the process.
        let watchdog = try Watchdog.started()
        if postsHostCalls || postsSystemCalls { try MailboxPoller.shared.start() }
        self.postsSystemCalls = postsSystemCalls
        phase = .running
        currentStop = stop
        let deadline = stop == .parked ? nil : effectiveTimeout.map {
            watchdog.arm(seconds: max($0 - loading, 1e-9), interrupter: vcpu.interrupter)
        }
        runEnds = stop == .parked ? nil : effectiveTimeout.map { monotonicNanoseconds() &+ UInt64(min(max($0 - loading, 0), 1e9) * 1e9) }
        if postsHostCalls || postsSystemCalls {
            let server = exitlessServer
            let linux = self.linux, tracing = configuration.traceSyscalls, traceDescriptor = configuration.traceDescriptor ?? 2
            server.prepare(handlers: handlers, systemCalls: !postsSystemCalls ? nil : { call in
                let result = try linux.serveExitless(call)
                if tracing, let result {
                    Sandbox.trace(call, result: LinuxTraceFormat.describe(result: result), outcome: nil, exitless: true,
                                  pid: linux.processes == nil ? nil : linux.pid,
                                  thread: linux.state.threads.count > 1 ? linux.publicThreadID(linux.currentThread.tid) : nil,
                                  to: traceDescriptor)
                }
                return result
            })
            exitless = server
            MailboxPoller.shared.register(server, eagerly: (postsHostCalls && configuration.hostCallTransport == .exitless)
                                                           || (postsSystemCalls && configuration.systemCallTransport == .exitless))
        }
        runDeadline = deadline
        linux.beginCPUAccounting()
        defer { linux.endCPUAccounting() }
        // The kick must reach this thread (deadlines, time slices, `interruptHandle`), whatever
        // mask the caller's thread pool gave it.
        let signalMask = VCPUInterrupter.unblockSignalOnThisThread()
        interruptHandle.beginRun(interrupter: vcpu.interrupter)
        defer { interruptHandle.endRun() }
        if hostSignalsTaken { hostSignals.setRunningThread(pthread_self()) }
        defer {
            if let deadline { Watchdog.shared.disarm(deadline) }
            if let server = exitless {
                MailboxPoller.shared.unregister(server)
                exitless = nil
                // The poller wrote the page behind GuestMemory's back: a fork's reset must restore it.
                if mailbox.takeWritten() { memory.noteHostWrite(mailboxPhysical, Int(PageSize.bytes)) }
            }
            VCPUInterrupter.restoreSignalMask(signalMask)
            if hostSignalsTaken { hostSignals.setRunningThread(nil) }
            runDeadline = nil
        }
        do {
            while true {
                // A host signal sent before the run (or between two kicks): leave at once to take it.
                if hostSignalsTaken, hostSignals.hasPending { vcpu.interrupter.immediateExit.store(1, ordering: .relaxed) }
                // Before the entry: the vDSO's clock page, and the running thread's time slice
                // (the watchdog ends it when several threads run). Both touch what the poller may
                // be changing (guest memory and its record of host writes; the Linux layer's
                // threads): under the server's lock when there is one.
                let beforeEntry = { () -> Double? in
                    self.clockPage?.refresh(vcpu: self.vcpu, memory: self.memory, enabled: self.configuration.timeInGuest != false)
                    return self.timeSliceLeft()
                }
                let left = exitless.map { server in server.exclusively(beforeEntry) } ?? beforeEntry()
                let slice = left.map { Watchdog.shared.arm(seconds: $0, interrupter: vcpu.interrupter) }
                let event = try vcpu.nextEvent(doorbell: memory.size)
                if let slice {
                    let fired = Watchdog.shared.fired(slice)
                    Watchdog.shared.disarm(slice)
                    // A kick that came after the exit would stop the next entry (or a host-side
                    // wait) for nothing: drop it, unless the run's own deadline fired too.
                    if fired, event != .interrupted, !(deadline.map(Watchdog.shared.fired) ?? false) { vcpu.clearImmediateExit() }
                }
                statistics.exits += 1
                if let parkingMonitor { noteParkedEvent(event, parkingMonitor) }
                // The poller stays out while the exit is handled (threads, signals, memory).
                let outcome: RunOutcome?
                if let server = exitless {
                    outcome = try server.whileHeld { () throws(KVMError) -> RunOutcome? in
                        try handleAndSchedule(event, deadline: deadline, stop: stop)
                    }
                } else {
                    outcome = try handleAndSchedule(event, deadline: deadline, stop: stop)
                }
                if let result = outcome {
                    switch result {
                    case .ready, .returned: phase = .paused(vcpu.registers)
                    default: phase = .finished(result)
                    }
                    return result
                }
            }
        } catch {
            phase = .finished(.hostFailure("\(error)"))
            throw .kvm(error)
        }
    }

    /// Handles one event, then switches threads when the slice is over and delivers pending
    /// signals, unless the vCPU is inside the exitless `syscall` stub (a call in flight there
    /// uses the shared mailbox: no other thread or handler may post until it is answered).
    func handleAndSchedule(_ event: GuestEvent, deadline: Watchdog.Token?, stop: StopCondition) throws(KVMError) -> RunOutcome? {
        var outcome = try handle(event, deadline: deadline, stop: stop)
        if outcome == nil, hostSignalsTaken, hostSignals.hasPending { outcome = takeHostSignals() }
        if outcome == nil, postsSystemCalls, X86CPUState.isInExitlessEntry(vcpu.registers.instructionPointer) { return nil }
        if outcome == nil { outcome = try preemptIfDue() }
        if outcome == nil { outcome = try deliverPendingSignals() }
        return outcome
    }

    /// Handles one event; returns the outcome when the run is over.
    func handle(_ event: GuestEvent, deadline: Watchdog.Token?, stop: StopCondition) throws(KVMError) -> RunOutcome? {
        let rip = { "0x" + String(self.vcpu.registers.instructionPointer, radix: 16) }
        switch event {
        case .hostCallTrap where followsHostCallInstruction(vcpu.registers.instructionPointer):
            return try serveHostCall(stop: stop)
        case .hostCallTrap:
            return .abiViolation("out of 1 byte(s) to port 0x\(String(hostCallPort, radix: 16)) at rip \(rip()) by another instruction form (host calls use out %al, $0x42)")
        case .exceptionReport where usesExceptionStubs:
            return try handleStubException()
        case .exceptionReport:
            return .abiViolation("out of 1 byte(s) to port 0x\(String(ExceptionStubs.reportPort, radix: 16)) at rip \(rip()) (host calls use out %al, $0x42)")
        case .portAccess(let port, let isOut, let size):
            return .abiViolation("\(isOut ? "out" : "in") of \(size) byte(s) to port 0x\(String(port, radix: 16)) at rip \(rip()) (host calls use out %al, $0x42)")
        case .exception(let vector, let errorCode):
            return try handleException(vector: vector, errorCode: errorCode)
        case .dirtyLogFull:
            try harvestDirtyRing()
            return nil
        case .interrupted:
            if let failure = exitless?.failure {
                return .hostCallFailed(number: failure.number, message: failure.message)
            }
            if let parkingMonitor, parkingMonitor.stopRequested.load(ordering: .acquiring) { return .ready }
            if let deadline, Watchdog.shared.fired(deadline) {
                return .timedOut(seconds: effectiveTimeout ?? 0, rip: vcpu.registers.instructionPointer)
            }
            if stop != .parked, interruptHandle.takeRequest() { return .interrupted(rip: vcpu.registers.instructionPointer) }
            vcpu.clearImmediateExit()
            return nil
        case .doorbell:
            return try serveHostCall(stop: stop)  // a host call by MMIO write
        case .unbackedMemory(let address, let isWrite, let length):
            return .abiViolation("\(isWrite ? "write" : "read") of \(length) bytes at unbacked guest-physical 0x\(String(address, radix: 16))")
        case .exceptionLost(let detail):
            // Hardware KVM without an IDT: an exception became a triple fault; the vector is lost.
            return .abiViolation("\(detail) at rip \(rip()): on \(platform.rawValue) a CPU exception without an IDT cannot be reported")
        case .entryFailed(let detail):
            return .hostFailure("\(detail): the hypervisor could not enter the guest")
        case .unexpected(let name):
            return .abiViolation("unexpected \(name) at rip \(rip())")
        }
    }

    /// Whether the exit came from `out %al, $0x42` (E6 42). KVM reports `outsb`, `rep outsb` and
    /// `out %al, %dx` to the same port with the same exit, and only the immediate form is the
    /// ABI. Where RIP stands at the exit differs: PVM has already advanced it past the
    /// instruction, hardware KVM advances it when the vCPU next runs. So the instruction is at
    /// `rip - 2` or at `rip`; a string form exits with RIP on or after a different opcode.
    func followsHostCallInstruction(_ rip: UInt64) -> Bool {
        // The host's own stubs (syscall entry, guest-call return) need no look: their bytes are ours.
        if GuestLayout.page(GuestLayout.syscallStubPage, contains: rip) || isInSyscallEntry(rip) { return true }
        let instruction: [UInt8] = [0xe6, UInt8(hostCallPort)]
        return (rip >= 2 && (try? space.hostRead(rip - 2, count: 2)) == instruction)
            || (try? space.hostRead(rip, count: 2)) == instruction
    }

    /// `registers` as they stand once the host call being served is complete: hardware KVM moves
    /// RIP past the `out` only when this vCPU next runs, which a copy of the state on another
    /// vCPU (a forked child's) never gets, so the copy steps over it itself.
    func registersAfterHostCall(_ registers: GuestRegisters) -> GuestRegisters {
        var registers = registers
        if system.platform != .pvm, (try? space.hostRead(registers.instructionPointer, count: 2)) == [0xe6, UInt8(hostCallPort)] {
            registers.instructionPointer &+= 2
        }
        return registers
    }

    /// Serves the host call described by the guest's registers; the guest resumes after its `out`.
    func serveHostCall(stop: StopCondition) throws(KVMError) -> RunOutcome? {
        statistics.hostCalls += 1
        let r = vcpu.registers
        if isSyscallTrap(r.instructionPointer) { return try serveSystemCall(r) }
        switch r.callNumber {
        case HostCallNumber.ready:
            vcpu.modifyRegisters { $0.callResult = 0 }
            // Only the `out` trap from user code pauses: through `syscall` on hardware KVM the
            // vCPU would be paused at CPL 0 inside the syscall entry.
            return stop == .ready && ExceptionStubs.vector(atStub: r.instructionPointer) == nil && !isInSyscallEntry(r.instructionPointer) ? .ready : nil
        case ParkingStub.parkWait:
            guard stop == .parked else {
                return .abiViolation("the parked-VM idle call (0x\(String(ParkingStub.parkWait, radix: 16))) outside a parked VM")
            }
            return .ready
        case HostCallNumber.guestCallReturn:
            guard stop == .guestReturn else {
                return .abiViolation("the guest-call return stub was reached outside a guest function call")
            }
            return .returned(r.returnedValue)
        default: break
        }
        let call = HostCall(number: r.callNumber, arguments: r.callArguments, memory: guestMemory)
        let result = try guestResult(of: call) { () throws -> Either<Int64, RunOutcome> in
            if call.number == HostCallNumber.mailboxWait {
                // The guest gave up spinning on an exitless call: serve or collect it here.
                guard let exitless else {
                    // The exitless `syscall` stub posted with nobody serving (the guest forged
                    // the polling word): back to the exit with its call.
                    if X86CPUState.isInExitlessEntry(r.instructionPointer) { return .left(X86CPUState.exitlessMustExit) }
                    throw HostCallFailure(HostCallErrno.ENOSYS)
                }
                let value = exitless.waitExit(sequence: call[0])
                MailboxPoller.shared.noteExitCall(from: exitless)
                if let failure = exitless.failure { return .right(.hostCallFailed(number: failure.number, message: failure.message)) }
                return .left(value)
            } else if call.number >= HostCallNumber.firstUserNumber {
                guard let handler = handlers[call.number] else { throw HostCallFailure(HostCallErrno.ENOSYS) }
                guard let exitless else { return .left(try handler(call)) }
                MailboxPoller.shared.noteExitCall(from: exitless)
                return .left(try exitless.exclusively { try handler(call) })
            } else {
                // Built-ins write guest memory too: never alongside a poller-served handler.
                let effect = if let exitless { try exitless.exclusively { try builtins.handle(call) } } else { try builtins.handle(call) }
                return try apply(effect)
            }
        }
        switch result {
        case .right(let outcome): return outcome
        case .left(let value):
            vcpu.modifyRegisters { $0.callResult = UInt64(bitPattern: value) }
            return nil
        }
    }
}
