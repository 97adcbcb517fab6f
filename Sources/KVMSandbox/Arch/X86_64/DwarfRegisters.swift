/// x86-64's DWARF register numbers (System V psABI, "DWARF Register Number Mapping"): the
/// columns the unwinder and the CFI evaluator track. Generic code names these roles, never a
/// number or a register.
enum DwarfRegister {
    /// RBP.
    static let framePointer = 6
    /// RSP.
    static let stackPointer = 7
    /// The return address column (RIP).
    static let returnAddress = 16
    /// What a frame's CFI may restore: RBX, RBP, R12-R15 (callee-saved) and the return address.
    static let tracked = [3, 6, 12, 13, 14, 15, 16]

    /// The unwinder's starting state: the callee-saved registers, the stack pointer and the
    /// instruction pointer (in the return-address column), by DWARF number.
    static func state(of registers: GuestRegisters) -> [Int: UInt64] {
        [3: registers.rbx, 6: registers.rbp, 7: registers.rsp, 12: registers.r12,
         13: registers.r13, 14: registers.r14, 15: registers.r15, 16: registers.rip]
    }

    /// The registers a DWARF state describes (the inverse of `state(of:)`; untracked registers 0).
    static func registers(from state: [Int: UInt64]) -> GuestRegisters {
        var registers = GuestRegisters()
        (registers.rbx, registers.rbp, registers.rsp) = (state[3] ?? 0, state[6] ?? 0, state[7] ?? 0)
        (registers.r12, registers.r13, registers.r14) = (state[12] ?? 0, state[13] ?? 0, state[14] ?? 0)
        (registers.r15, registers.rip) = (state[15] ?? 0, state[16] ?? 0)
        return registers
    }
}
