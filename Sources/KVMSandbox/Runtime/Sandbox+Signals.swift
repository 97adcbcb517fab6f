#if canImport(Glibc)
import Glibc
#endif

/// Signal delivery: when a thread's pending signals run (before it next runs user code), which
/// stack and mask they get, the bookkeeping of frames for `rt_sigreturn`. The frame itself is the
/// architecture's (`X86SignalFrame`); `rt_sigreturn` restores whatever the handler left in it
/// (Go's handler rewrites the instruction and stack pointers to inject a panic).
extension Sandbox {
    /// Whether `rip` is just after the `out` of a syscall entry (PVM's user stub or hardware's
    /// CPL 0 entry): the interrupted user code continues at RCX with R11's flags.
    func isAtSyscallReturn(_ rip: UInt64) -> Bool {
        rip == GuestLayout.syscallStubPage + 2
            || (usesExceptionStubs && (rip == ExceptionStubs.stubPage + ExceptionStubs.syscallEntryOffset + 2
                                       || rip == GuestLayout.kernelSyscallPage + 2))
    }

    /// The user-mode registers signal delivery interrupts, or nil when the vCPU is somewhere a
    /// handler cannot start from (inside a stub before its `out`): delivery waits for the next exit.
    /// A host call that was just served counts as done (on hardware KVM RIP is still on its
    /// `out`), so a signal its call raised (`kill` of itself, SIGCHLD ending `pause`) runs its
    /// handler before the call returns to user code, as on PVM and on Linux.
    func interruptedUserRegisters() -> GuestRegisters? {
        let registers = registersAfterHostCall(vcpu.registers)
        if isAtSyscallReturn(registers.instructionPointer) { return registers.returningFromSystemCall }
        let inStubs = [GuestLayout.syscallStubPage, ExceptionStubs.stubPage, GuestLayout.kernelSyscallPage]
            .contains { GuestLayout.page($0, contains: registers.instructionPointer) }
        return inStubs ? nil : registers
    }

    /// Delivers the running thread's pending, unblocked signals (and SIGALRM when due) before it
    /// runs user code again. Returns the outcome when a frame cannot be written (the process
    /// would be killed with SIGSEGV) or a signal's default action ends the run.
    /// Signals the host sent (`signalSender`), made pending on the running thread as a
    /// process-directed `kill` would: delivered with the others, dropped when ignored; one whose
    /// default is to terminate ends the run, and SIGKILL always does.
    func takeHostSignals() -> RunOutcome? {
        for number in hostSignals.take() {
            if number == 9 { return .signaled(signal: 9) }
            if case .signal(let fatal) = linux.send(UInt64(number), to: linux.state.currentThread) { return .signaled(signal: fatal) }
        }
        return nil
    }

    func deliverPendingSignals() throws(KVMError) -> RunOutcome? {
        if case .signal(let number)? = linux.fireAlarmIfDue(now: monotonicNanoseconds()) { return .signaled(signal: number) }
        let index = linux.state.currentThread
        guard linux.state.threads[index].pendingSignals & ~linux.state.threads[index].signalMask != 0,
              let interrupted = interruptedUserRegisters(), let number = linux.takeDeliverableSignal(index) else {
            // rt_sigsuspend ended without a handler to run (the signal was ignored): its mask goes.
            if let saved = linux.state.threads[index].suspendedMask, interruptedUserRegisters() != nil {
                linux.state.threads[index].signalMask = saved
                linux.state.threads[index].suspendedMask = nil
            }
            return nil
        }
        guard try deliver(signal: number, interrupting: interrupted, details: .sentByThread) else { return .signaled(signal: 11) }
        return nil
    }

    /// A CPU exception as the signal Linux would send, when the program handles that signal
    /// and does not block it: the vCPU then runs the handler. False: report the fault instead.
    func deliverFault(_ fault: GuestFault, interrupting registers: GuestRegisters) throws(KVMError) -> Bool {
        let number = Int(X86Exception.signal(fault.vector))
        let index = linux.state.currentThread
        guard linux.action(number).isHandler, linux.state.threads[index].signalMask & (UInt64(1) << (number - 1)) == 0 else {
            return false
        }
        return try deliver(signal: number, interrupting: registers, details: SignalDetails(fault: fault))
    }

    /// Writes the signal frame and points the vCPU at the handler. False when the frame would
    /// not fit in writable guest memory.
    func deliver(signal number: Int, interrupting registers: GuestRegisters, details: SignalDetails) throws(KVMError) -> Bool {
        let index = linux.state.currentThread
        let action = linux.action(number)
        let thread = linux.state.threads[index]
        let floatingPoint = try vcpu.floatingPointState(system.stateCapabilities)
        let restoredMask = thread.suspendedMask ?? thread.signalMask  // rt_sigsuspend's caller gets its own back
        guard let frame = X86SignalFrame(signal: number, interrupting: registers, details: details, action: action,
                                         alternateStack: thread.alternateStack, restoredMask: restoredMask,
                                         xsave: floatingPoint.xsaveArea(size: X86CPUIdentity.xsaveSize),
                                         userAddressLimit: X86PageTables.userAddressLimit) else { return false }
        do {
            try guestMemory.write(frame.bytes, to: frame.address)
            if !frame.floatingPointBytes.isEmpty { try guestMemory.write(frame.floatingPointBytes, to: frame.floatingPointAddress) }
        } catch {
            return false
        }
        linux.state.threads[index].signalFrames.append(SignalFrameRecord(frame: frame.address, floatingPoint: floatingPoint))
        if linux.state.threads[index].signalFrames.count > 64 { linux.state.threads[index].signalFrames.removeFirst() }
        var mask = thread.signalMask | action.mask
        if action.flags & SignalAction.noDefer == 0 { mask |= UInt64(1) << (number - 1) }
        linux.state.threads[index].signalMask = mask & ~LinuxPersonality.unblockable
        linux.state.threads[index].suspendedMask = nil
        if action.flags & SignalAction.resetHand != 0 { linux.state.signalActions[number] = nil }
        vcpu.modifyRegisters { $0 = frame.handlerRegisters }
        try vcpu.setSpecialRegisters(X86CPUState.userMode(try vcpu.specialRegisters()))
        return true
    }

    /// rt_sigreturn: the registers and mask from the `ucontext` at the caller's stack (the frame
    /// the handler returned from), the x87/SSE/AVX state saved when that frame was made. A frame
    /// that cannot be read kills the process with SIGSEGV, as on Linux.
    func returnFromSignal() throws(KVMError) -> RunOutcome? {
        let current = vcpu.registers
        let context = X86SignalFrame.contextAddress(returning: current)
        guard let bytes = try? guestMemory.read(context, count: Int(X86SignalFrame.contextSize)),
              let (restored, mask) = X86SignalFrame.restore(context: bytes, over: current) else { return .signaled(signal: 11) }
        let index = linux.state.currentThread
        linux.state.threads[index].signalMask = mask & ~LinuxPersonality.unblockable
        let frame = X86SignalFrame.frameAddress(ofContext: context)
        if let saved = linux.state.threads[index].signalFrames.lastIndex(where: { $0.frame == frame }) {
            try vcpu.setFloatingPointState(linux.state.threads[index].signalFrames[saved].floatingPoint)
            linux.state.threads[index].signalFrames.removeSubrange(saved...)
        }
        vcpu.modifyRegisters { $0 = restored }
        if isInSyscallEntry(current.instructionPointer) { try vcpu.setSpecialRegisters(X86CPUState.userMode(try vcpu.specialRegisters())) }
        return nil
    }
}
