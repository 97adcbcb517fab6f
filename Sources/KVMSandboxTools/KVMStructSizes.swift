import KVMSandbox
import CKVM

/// The sizes of the C structs, as the C compiler sees them (checked against Swift in a test).
public enum KVMStructSizes {
    /// `sizeof` of each struct Swift imports, keyed by name, with Swift's `MemoryLayout.size` beside it.
    public static var all: [(name: String, c: Int, swift: Int)] {
        [
            ("kvm_run", ckvm_sizeof_kvm_run(), MemoryLayout<kvm_run>.size),
            ("kvm_regs", ckvm_sizeof_kvm_regs(), MemoryLayout<kvm_regs>.size),
            ("kvm_sregs", ckvm_sizeof_kvm_sregs(), MemoryLayout<kvm_sregs>.size),
            ("kvm_vcpu_events", ckvm_sizeof_kvm_vcpu_events(), MemoryLayout<kvm_vcpu_events>.size),
            ("kvm_userspace_memory_region", ckvm_sizeof_kvm_userspace_memory_region(),
             MemoryLayout<kvm_userspace_memory_region>.size),
            ("kvm_fpu", ckvm_sizeof_kvm_fpu(), MemoryLayout<kvm_fpu>.size),
            ("kvm_xsave", ckvm_sizeof_kvm_xsave(), MemoryLayout<kvm_xsave>.size),
            ("kvm_xcrs", ckvm_sizeof_kvm_xcrs(), MemoryLayout<kvm_xcrs>.size),
            ("kvm_debugregs", ckvm_sizeof_kvm_debugregs(), MemoryLayout<kvm_debugregs>.size),
            ("kvm_run.s offset", ckvm_offsetof_kvm_run_s(), MemoryLayout<kvm_run>.offset(of: \kvm_run.s) ?? -1),
            ("kvm_msrs header", ckvm_sizeof_kvm_msrs(), ckvm_offsetof_msr_list_entries()),
            ("ckvm_msr_list.entries offset", ckvm_offsetof_msr_list_entries(),
             MemoryLayout<ckvm_msr_list>.offset(of: \ckvm_msr_list.entries) ?? -1),
        ]
    }
}
