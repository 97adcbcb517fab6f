/// What a signal reports beyond its number: `siginfo`'s code and address, and the `sigcontext`
/// fields an exception fills in (x86-64: the error code, the trap number, CR2).
struct SignalDetails {
    /// `si_code`: SI_USER 0, SI_TKILL -6, SEGV_MAPERR 1, SEGV_ACCERR 2, SI_KERNEL 0x80, ...
    var code: Int32 = 0
    /// `si_addr`, for faults.
    var address: UInt64 = 0
    /// The exception's error code (`sigcontext.err`).
    var errorCode: UInt64 = 0
    /// The exception's vector (`sigcontext.trapno`).
    var trapNumber: UInt64 = 0
    /// The faulting address of a page fault (`sigcontext.cr2`).
    var cr2: UInt64 = 0

    /// What Linux reports for a CPU exception delivered as a signal.
    init(fault: GuestFault) {
        errorCode = UInt64(fault.errorCode ?? 0)
        trapNumber = UInt64(fault.vector)
        switch fault.vector {
        case 14:
            code = (fault.errorCode ?? 0) & 1 == 0 ? 1 : 2  // SEGV_MAPERR, SEGV_ACCERR
            address = fault.faultAddress ?? 0
            cr2 = fault.faultAddress ?? 0
        case 0: (code, address) = (1, fault.registers.rip)            // FPE_INTDIV
        case 6: (code, address) = (2, fault.registers.rip)            // ILL_ILLOPN
        case 17: (code, address) = (1, fault.faultAddress ?? 0)       // BUS_ADRALN
        default: code = 0x80                                          // SI_KERNEL (#GP, #BP, ...)
        }
    }

    /// A signal sent by a thread of the sandbox (`kill`, `tkill`, `tgkill`): `SI_TKILL`.
    static let sentByThread = SignalDetails(code: -6)

    private init(code: Int32) { self.code = code }
}

/// Linux's x86-64 signal frame, `rt_sigframe`: the return address (the action's restorer), a
/// `ucontext` (flags, link, the alternate stack, `sigcontext` with the interrupted registers,
/// the mask to restore, a pointer to the XSAVE area) and `siginfo`; the XSAVE area (with
/// Linux's software-reserved bytes and FP_XSTATE_MAGIC2) above it. Pure values: the caller
/// writes the bytes and loads the registers.
struct X86SignalFrame {
    /// sizeof(rt_sigframe) without the XSAVE area: pretcode, ucontext (304), siginfo (128).
    static let size: UInt64 = 8 + contextSize + 128
    /// sizeof(ucontext) up to and including `uc_sigmask`.
    static let contextSize: UInt64 = 304
    /// Bytes below the interrupted stack pointer the frame leaves alone (the System V red zone).
    static let redZone: UInt64 = 128

    /// Where the frame starts (the restorer's address, at the handler's RSP).
    let address: UInt64
    /// The frame's bytes, at `address`.
    let bytes: [UInt8]
    /// Where the XSAVE area goes, and its bytes (empty when the vCPU has no XSAVE state).
    let floatingPointAddress: UInt64
    /// The XSAVE area with Linux's software-reserved bytes and trailing magic.
    let floatingPointBytes: [UInt8]
    /// The registers the handler starts with: (signo, &info, &uc) in RDI, RSI, RDX.
    let handlerRegisters: GuestRegisters

    /// The frame for `signal` interrupting `registers`, placed on `alternateStack` when the
    /// action asks for it and the thread is not on it already, else below the red zone. Nil when
    /// it would not fit below `userAddressLimit` (the process then dies of SIGSEGV).
    init?(signal number: Int, interrupting registers: GuestRegisters, details: SignalDetails, action: SignalAction,
          alternateStack: SignalStack, restoredMask: UInt64, xsave: [UInt8], userAddressLimit: UInt64) {
        var sp = registers.rsp
        let onAlternate = alternateStack.contains(sp)
        if action.flags & SignalAction.onStack != 0, alternateStack.enabled, !onAlternate {
            sp = alternateStack.base &+ alternateStack.size
        } else {
            sp = sp &- Self.redZone
        }
        let fpArea = (sp &- UInt64(xsave.count) &- 4) & ~63
        let frame = ((fpArea &- Self.size) & ~15) &- 8
        guard frame < fpArea, fpArea < userAddressLimit else { return nil }
        let context = frame + 8, info = frame + 8 + Self.contextSize

        var bytes: [UInt8] = action.restorer.littleEndianBytes
        // ucontext: uc_flags (UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS), uc_link, uc_stack.
        bytes += UInt64(xsave.isEmpty ? 6 : 7).littleEndianBytes + UInt64(0).littleEndianBytes
        bytes += alternateStack.base.littleEndianBytes
        bytes += UInt32(onAlternate ? 1 : (alternateStack.enabled ? 0 : 2)).littleEndianBytes + [0, 0, 0, 0]
        bytes += alternateStack.size.littleEndianBytes
        // sigcontext.
        let r = registers
        for value in [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.rflags] {
            bytes += value.littleEndianBytes
        }
        bytes += UInt16(X86CPUState.userCode).littleEndianBytes + [0, 0, 0, 0] + UInt16(X86CPUState.userData).littleEndianBytes  // cs gs fs ss
        bytes += details.errorCode.littleEndianBytes + details.trapNumber.littleEndianBytes
        bytes += restoredMask.littleEndianBytes + details.cr2.littleEndianBytes
        bytes += (xsave.isEmpty ? 0 : fpArea).littleEndianBytes + [UInt8](repeating: 0, count: 64)
        bytes += restoredMask.littleEndianBytes                                        // uc_sigmask
        // siginfo: signo, errno, code, then the union (si_addr for faults; pid/uid for kill).
        var siginfo = UInt32(number).littleEndianBytes + [0, 0, 0, 0] + UInt32(bitPattern: details.code).littleEndianBytes + [0, 0, 0, 0]
        siginfo += details.code > 0 && details.code < 0x80 ? details.address.littleEndianBytes : [1, 0, 0, 0, 0, 0, 0, 0]  // si_addr, or si_pid 1 / si_uid 0
        siginfo += [UInt8](repeating: 0, count: 128 - siginfo.count)
        bytes += siginfo

        var area = xsave
        if !area.isEmpty {
            // Linux's software-reserved bytes: FP_XSTATE_MAGIC1, the extended size, the
            // features, the XSAVE size; FP_XSTATE_MAGIC2 after the area.
            let features = xsave.count >= 520 ? UInt64(littleEndianBytes: area[512..<520]) : 3
            let software = UInt32(0x4650_5853).littleEndianBytes + UInt32(xsave.count + 4).littleEndianBytes
                + features.littleEndianBytes + UInt32(xsave.count).littleEndianBytes
            area.replaceSubrange(464..<464 + software.count, with: software)
            area += UInt32(0x4650_5845).littleEndianBytes
        }

        var handler = registers
        (handler.rip, handler.rsp) = (action.handler, frame)
        (handler.rdi, handler.rsi, handler.rdx, handler.rax) = (UInt64(number), info, context, 0)
        handler.rflags = (registers.rflags & X86CPUState.userFlagsMask & ~0x400) | X86CPUState.rflags  // DF clear
        (address, self.bytes, floatingPointAddress, floatingPointBytes, handlerRegisters) = (frame, bytes, fpArea, area, handler)
    }

    /// Where `rt_sigreturn` finds the `ucontext`: at the stack pointer the handler returned with
    /// (the restorer popped the return address).
    static func contextAddress(returning registers: GuestRegisters) -> UInt64 { registers.rsp }

    /// The frame's start for the `ucontext` at `context` (where signal delivery recorded it).
    static func frameAddress(ofContext context: UInt64) -> UInt64 { context &- 8 }

    /// `rt_sigreturn`: the registers and signal mask the `ucontext` bytes at `contextAddress`
    /// restore, over `current` (only user-settable flags survive).
    static func restore(context bytes: [UInt8], over current: GuestRegisters) -> (registers: GuestRegisters, mask: UInt64)? {
        guard bytes.count >= Int(contextSize) else { return nil }
        func word(_ offset: Int) -> UInt64 { UInt64(littleEndianBytes: bytes[offset..<offset + 8]) }
        let m = 40  // uc_mcontext
        var restored = current
        (restored.r8, restored.r9, restored.r10, restored.r11) = (word(m), word(m + 8), word(m + 16), word(m + 24))
        (restored.r12, restored.r13, restored.r14, restored.r15) = (word(m + 32), word(m + 40), word(m + 48), word(m + 56))
        (restored.rdi, restored.rsi, restored.rbp, restored.rbx) = (word(m + 64), word(m + 72), word(m + 80), word(m + 88))
        (restored.rdx, restored.rax, restored.rcx, restored.rsp) = (word(m + 96), word(m + 104), word(m + 112), word(m + 120))
        restored.rip = word(m + 128)
        restored.rflags = (word(m + 136) & X86CPUState.userFlagsMask) | X86CPUState.rflags
        return (restored, word(296))
    }
}
