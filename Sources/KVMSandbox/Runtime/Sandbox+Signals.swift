#if canImport(Glibc)
import Glibc
#endif

/// Signal delivery with Linux's x86-64 frame: `rt_sigframe` (return address = the action's
/// restorer, `ucontext` with the interrupted registers in `sigcontext`, the signal mask and a
/// pointer to the XSAVE area, then `siginfo`), on the thread's stack below the red zone or on
/// its alternate stack (SA_ONSTACK). The handler gets (signo, &info, &uc) in rdi, rsi, rdx;
/// `rt_sigreturn` restores whatever the handler left in the `ucontext` (Go's handler rewrites
/// RIP and RSP to inject a panic).
extension Sandbox {
    /// What a signal reports beyond its number (`siginfo` and the `sigcontext` fields).
    struct SignalDetails {
        var code: Int32 = 0            // si_code: SI_USER 0, SI_TKILL -6, SEGV_MAPERR 1, ...
        var address: UInt64 = 0        // si_addr for faults
        var errorCode: UInt64 = 0
        var trapNumber: UInt64 = 0
        var cr2: UInt64 = 0
    }

    /// sizeof(rt_sigframe) without the XSAVE area: pretcode, ucontext (304), siginfo (128).
    static let signalFrameSize: UInt64 = 8 + 304 + 128

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
        var registers = registersAfterHostCall(vcpu.registers)
        if isAtSyscallReturn(registers.rip) {
            registers.rip = registers.rcx
            registers.rflags = (registers.r11 & X86CPUState.userFlagsMask) | X86CPUState.rflags
            return registers
        }
        let inStubs = [GuestLayout.syscallStubPage, ExceptionStubs.stubPage, GuestLayout.kernelSyscallPage]
            .contains { GuestLayout.page($0, contains: registers.rip) }
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
        let details = SignalDetails(code: -6)  // SI_TKILL
        guard try deliver(signal: number, interrupting: interrupted, details: details) else { return .signaled(signal: 11) }
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
        var details = SignalDetails(errorCode: UInt64(fault.errorCode ?? 0), trapNumber: UInt64(fault.vector))
        switch fault.vector {
        case 14:
            details.code = (fault.errorCode ?? 0) & 1 == 0 ? 1 : 2  // SEGV_MAPERR, SEGV_ACCERR
            details.address = fault.faultAddress ?? 0
            details.cr2 = fault.faultAddress ?? 0
        case 0: (details.code, details.address) = (1, registers.rip)           // FPE_INTDIV
        case 6: (details.code, details.address) = (2, registers.rip)           // ILL_ILLOPN
        case 17: (details.code, details.address) = (1, fault.faultAddress ?? 0) // BUS_ADRALN
        default: details.code = 0x80                                            // SI_KERNEL (#GP, #BP, ...)
        }
        return try deliver(signal: number, interrupting: registers, details: details)
    }

    /// Writes the signal frame and points the vCPU at the handler. False when the frame would
    /// not fit in writable guest memory.
    func deliver(signal number: Int, interrupting registers: GuestRegisters, details: SignalDetails) throws(KVMError) -> Bool {
        let index = linux.state.currentThread
        let action = linux.action(number)
        let thread = linux.state.threads[index]
        let floatingPoint = try vcpu.floatingPointState(system.stateCapabilities)
        let xsave = Self.xsaveBytes(floatingPoint)

        // Where: the alternate stack when asked for and not on it already, else below the red zone.
        var sp = registers.rsp
        let onAlternate = thread.alternateStack.contains(sp)
        if action.flags & SignalAction.onStack != 0, thread.alternateStack.enabled, !onAlternate {
            sp = thread.alternateStack.base &+ thread.alternateStack.size
        } else {
            sp = sp &- 128
        }
        let fpArea = (sp &- UInt64(xsave.count) &- 4) & ~63
        let frame = ((fpArea &- Self.signalFrameSize) & ~15) &- 8
        guard frame < fpArea, fpArea < X86PageTables.userAddressLimit else { return false }
        let context = frame + 8, info = frame + 8 + 304

        var bytes: [UInt8] = action.restorer.littleEndianBytes
        // ucontext: uc_flags (UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS), uc_link, uc_stack.
        bytes += UInt64(xsave.isEmpty ? 6 : 7).littleEndianBytes + UInt64(0).littleEndianBytes
        bytes += thread.alternateStack.base.littleEndianBytes
        bytes += UInt32(onAlternate ? 1 : (thread.alternateStack.enabled ? 0 : 2)).littleEndianBytes + [0, 0, 0, 0]
        bytes += thread.alternateStack.size.littleEndianBytes
        // sigcontext.
        let r = registers
        for value in [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.rflags] {
            bytes += value.littleEndianBytes
        }
        bytes += UInt16(X86CPUState.userCode).littleEndianBytes + [0, 0, 0, 0] + UInt16(X86CPUState.userData).littleEndianBytes  // cs gs fs ss
        bytes += details.errorCode.littleEndianBytes + details.trapNumber.littleEndianBytes
        let restoredMask = thread.suspendedMask ?? thread.signalMask  // rt_sigsuspend's caller gets its own back
        bytes += restoredMask.littleEndianBytes + details.cr2.littleEndianBytes
        bytes += (xsave.isEmpty ? 0 : fpArea).littleEndianBytes + [UInt8](repeating: 0, count: 64)
        bytes += restoredMask.littleEndianBytes                                        // uc_sigmask
        // siginfo: signo, errno, code, then the union (si_addr for faults; pid/uid for kill).
        var siginfo = UInt32(number).littleEndianBytes + [0, 0, 0, 0] + UInt32(bitPattern: details.code).littleEndianBytes + [0, 0, 0, 0]
        siginfo += details.code > 0 && details.code < 0x80 ? details.address.littleEndianBytes : [1, 0, 0, 0, 0, 0, 0, 0]  // si_addr, or si_pid 1 / si_uid 0
        siginfo += [UInt8](repeating: 0, count: 128 - siginfo.count)
        bytes += siginfo
        do {
            try guestMemory.write(bytes, to: frame)
            if !xsave.isEmpty {
                var area = xsave
                // Linux's software-reserved bytes: FP_XSTATE_MAGIC1, the extended size, the
                // features, the XSAVE size; FP_XSTATE_MAGIC2 after the area.
                let features = xsave.count >= 520 ? UInt64(littleEndianBytes: area[512..<520]) : 3
                let software = UInt32(0x4650_5853).littleEndianBytes + UInt32(xsave.count + 4).littleEndianBytes
                    + features.littleEndianBytes + UInt32(xsave.count).littleEndianBytes
                area.replaceSubrange(464..<464 + software.count, with: software)
                try guestMemory.write(area + UInt32(0x4650_5845).littleEndianBytes, to: fpArea)
            }
        } catch {
            return false
        }
        linux.state.threads[index].signalFrames.append(SignalFrameRecord(frame: frame, floatingPoint: floatingPoint))
        if linux.state.threads[index].signalFrames.count > 64 { linux.state.threads[index].signalFrames.removeFirst() }
        var mask = thread.signalMask | action.mask
        if action.flags & SignalAction.noDefer == 0 { mask |= UInt64(1) << (number - 1) }
        linux.state.threads[index].signalMask = mask & ~LinuxPersonality.unblockable
        linux.state.threads[index].suspendedMask = nil
        if action.flags & SignalAction.resetHand != 0 { linux.state.signalActions[number] = nil }

        var handler = registers
        (handler.rip, handler.rsp) = (action.handler, frame)
        (handler.rdi, handler.rsi, handler.rdx, handler.rax) = (UInt64(number), info, context, 0)
        handler.rflags = (registers.rflags & X86CPUState.userFlagsMask & ~0x400) | X86CPUState.rflags  // DF clear
        vcpu.modifyRegisters { $0 = handler }
        try vcpu.setSpecialRegisters(X86CPUState.userMode(try vcpu.specialRegisters()))
        return true
    }

    /// rt_sigreturn: the registers and mask from the `ucontext` at the caller's stack (the frame
    /// the handler returned from), the x87/SSE/AVX state saved when that frame was made. A frame
    /// that cannot be read kills the process with SIGSEGV, as on Linux.
    func returnFromSignal() throws(KVMError) -> RunOutcome? {
        let current = vcpu.registers
        let context = current.rsp
        guard let bytes = try? guestMemory.read(context, count: 304) else { return .signaled(signal: 11) }
        func word(_ offset: Int) -> UInt64 { UInt64(littleEndianBytes: bytes[offset..<offset + 8]) }
        let m = 40  // uc_mcontext
        var restored = current
        (restored.r8, restored.r9, restored.r10, restored.r11) = (word(m), word(m + 8), word(m + 16), word(m + 24))
        (restored.r12, restored.r13, restored.r14, restored.r15) = (word(m + 32), word(m + 40), word(m + 48), word(m + 56))
        (restored.rdi, restored.rsi, restored.rbp, restored.rbx) = (word(m + 64), word(m + 72), word(m + 80), word(m + 88))
        (restored.rdx, restored.rax, restored.rcx, restored.rsp) = (word(m + 96), word(m + 104), word(m + 112), word(m + 120))
        restored.rip = word(m + 128)
        restored.rflags = (word(m + 136) & X86CPUState.userFlagsMask) | X86CPUState.rflags
        let index = linux.state.currentThread
        linux.state.threads[index].signalMask = word(296) & ~LinuxPersonality.unblockable
        if let saved = linux.state.threads[index].signalFrames.lastIndex(where: { $0.frame == context &- 8 }) {
            try vcpu.setFloatingPointState(linux.state.threads[index].signalFrames[saved].floatingPoint)
            linux.state.threads[index].signalFrames.removeSubrange(saved...)
        }
        vcpu.modifyRegisters { $0 = restored }
        if isInSyscallEntry(current.rip) { try vcpu.setSpecialRegisters(X86CPUState.userMode(try vcpu.specialRegisters())) }
        return nil
    }

    /// The XSAVE area as the guest sees it (empty with only `kvm_fpu`: no XSAVE frame then).
    static func xsaveBytes(_ state: FloatingPointState) -> [UInt8] {
        guard case .xsave(let saved) = state else { return [] }
        var area = saved.value
        let size = Int(min(4096, max(576, X86CPUIdentity.xsaveSize)))
        return withUnsafeBytes(of: &area.region) { Array($0.prefix(size)) }
    }
}
