/// The guest's general-purpose registers at a point in time: x86-64's sixteen, RIP and RFLAGS.
/// Generic code reads and writes them through the neutral names of `GuestRegisters+ABI.swift`
/// (`instructionPointer`, `callNumber`, `callResult`, ...); only `Arch/X86_64` names a register.
public struct GuestRegisters: Sendable, Equatable, Codable {
    // The sixteen general-purpose registers, RIP and RFLAGS.
    /// `rax`.
    public var rax: UInt64
    /// `rbx`.
    public var rbx: UInt64
    /// `rcx`.
    public var rcx: UInt64
    /// `rdx`.
    public var rdx: UInt64
    /// `rsi`.
    public var rsi: UInt64
    /// `rdi`.
    public var rdi: UInt64
    /// `rbp`.
    public var rbp: UInt64
    /// `rsp`.
    public var rsp: UInt64
    /// `r8`.
    public var r8: UInt64
    /// `r9`.
    public var r9: UInt64
    /// `r10`.
    public var r10: UInt64
    /// `r11`.
    public var r11: UInt64
    /// `r12`.
    public var r12: UInt64
    /// `r13`.
    public var r13: UInt64
    /// `r14`.
    public var r14: UInt64
    /// `r15`.
    public var r15: UInt64
    /// The instruction pointer.
    public var rip: UInt64
    /// The flags register.
    public var rflags: UInt64

    /// All zero.
    init() {
        (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp) = (0, 0, 0, 0, 0, 0, 0, 0)
        (r8, r9, r10, r11, r12, r13, r14, r15) = (0, 0, 0, 0, 0, 0, 0, 0)
        (rip, rflags) = (0, 0)
    }

    /// Name/value pairs in the conventional order, for printing.
    public var named: [(String, UInt64)] {
        [("rax", rax), ("rbx", rbx), ("rcx", rcx), ("rdx", rdx), ("rsi", rsi), ("rdi", rdi), ("rbp", rbp),
         ("rsp", rsp), ("r8", r8), ("r9", r9), ("r10", r10), ("r11", r11), ("r12", r12), ("r13", r13),
         ("r14", r14), ("r15", r15), ("rip", rip), ("rflags", rflags)]
    }
}

