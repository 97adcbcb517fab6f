import CKVM

/// The general-purpose registers in KVM's layout (`struct kvm_regs`) and back: the only place
/// the two meet.
extension GuestRegisters {
    init(_ r: kvm_regs) {
        self.init()
        (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp) = (r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp)
        (r8, r9, r10, r11, r12, r13, r14, r15) = (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15)
        (rip, rflags) = (r.rip, r.rflags)
    }

    /// The registers in KVM's layout.
    var kvmRegisters: kvm_regs {
        kvm_regs(rax: rax, rbx: rbx, rcx: rcx, rdx: rdx, rsi: rsi, rdi: rdi, rsp: rsp, rbp: rbp,
                 r8: r8, r9: r9, r10: r10, r11: r11, r12: r12, r13: r13, r14: r14, r15: r15,
                 rip: rip, rflags: rflags)
    }
}

extension VCPUState {
    /// The general-purpose registers, as the rest of the library sees them.
    var generalRegisters: GuestRegisters {
        get { GuestRegisters(registers) }
        set { registers = newValue.kvmRegisters }
    }
}
