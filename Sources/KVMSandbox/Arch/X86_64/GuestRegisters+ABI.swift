/// x86-64's calling conventions under neutral names: what generic code (the run loop, threads,
/// processes, guest calls, parking) uses instead of naming registers. A second architecture
/// provides the same members for its own `GuestRegisters`.
extension GuestRegisters {
    /// Where the guest executes next (RIP).
    public var instructionPointer: UInt64 {
        get { rip }
        set { rip = newValue }
    }

    /// The guest's stack pointer (RSP).
    public var stackPointer: UInt64 {
        get { rsp }
        set { rsp = newValue }
    }

    /// The frame pointer (RBP), where the unwinder starts when there is no CFI.
    var framePointer: UInt64 { rbp }

    /// The number of the system call or host call being made (RAX), as a signed value.
    var callNumber: Int { Int(truncatingIfNeeded: Int64(bitPattern: rax)) }

    /// The six arguments of a system call or host call in order (RDI, RSI, RDX, R10, R8, R9:
    /// Linux's order; R10 stands for RCX, which `syscall` overwrites).
    var callArguments: [UInt64] { [rdi, rsi, rdx, r10, r8, r9] }

    /// The value a system call or host call returns to the guest (RAX).
    var callResult: UInt64 {
        get { rax }
        set { rax = newValue }
    }

    /// The value a guest function called by the host returned: its RAX, which the return stub
    /// (`X86CPUState.returnStub`) moved into RDI before its host call.
    var returnedValue: UInt64 { rdi }

    /// How many arguments a guest function call passes in registers.
    static let functionArgumentCount = 6

    /// Sets up a call of the function at `entry` with the stack at `stack` (its return address
    /// already stored there) and up to `functionArgumentCount` integer arguments (System V:
    /// RDI, RSI, RDX, RCX, R8, R9; RAX 0 for a variadic callee's vector count).
    mutating func prepareFunctionCall(entry: UInt64, stack: UInt64, arguments: [UInt64]) {
        (rip, rsp, rax) = (entry, stack, 0)
        let slots: [WritableKeyPath<GuestRegisters, UInt64>] = [\.rdi, \.rsi, \.rdx, \.rcx, \.r8, \.r9]
        for (slot, value) in zip(slots, arguments) { self[keyPath: slot] = value }
    }

    /// The `syscall` instruction (0F 05): what `systemCallAddress` must hold for a call to be
    /// restarted.
    static let systemCallInstruction: [UInt8] = [0x0f, 0x05]

    /// The address of the `syscall` instruction that made the call in flight (RCX, which
    /// `syscall` set to the next instruction, minus its length), or nil when RCX cannot be one.
    var systemCallAddress: UInt64? {
        rcx >= UInt64(Self.systemCallInstruction.count) ? rcx &- UInt64(Self.systemCallInstruction.count) : nil
    }

    /// These registers as user code sees them once the system call in flight returns: RIP from
    /// RCX, RFLAGS from R11 (keeping only what user code may set).
    var returningFromSystemCall: GuestRegisters {
        var registers = self
        registers.rip = rcx
        registers.rflags = (r11 & X86CPUState.userFlagsMask) | X86CPUState.rflags
        return registers
    }

    /// These registers back on the `syscall` instruction (RAX still holds the number), so that
    /// resuming makes the same call again.
    var restartingSystemCall: GuestRegisters {
        var registers = returningFromSystemCall
        registers.rip = rcx &- UInt64(Self.systemCallInstruction.count)
        return registers
    }

    /// When the registers describe a thread blocked in a system call (RIP on the return from
    /// the entry stub), where its user code stands: for backtraces.
    var userInstructionPointerInSystemCall: UInt64 { rcx }

    /// The flags an embedder's or a signal handler's registers may carry into user mode: the
    /// arithmetic and direction flags, never IOPL, interrupts or trap flags.
    mutating func keepUserSettableFlags() {
        rflags = (rflags & ExceptionStubs.userSettableFlags) | X86CPUState.rflags
    }

    /// Makes these registers describe a call of `number` with `arguments` (the first six
    /// used), as the guest's trap would: for the host-call fuzzer.
    mutating func setCall(number: Int, arguments: [UInt64]) {
        rax = UInt64(bitPattern: Int64(number))
        let padded = arguments + [UInt64](repeating: 0, count: max(0, 6 - arguments.count))
        (rdi, rsi, rdx, r10, r8, r9) = (padded[0], padded[1], padded[2], padded[3], padded[4], padded[5])
    }
}
