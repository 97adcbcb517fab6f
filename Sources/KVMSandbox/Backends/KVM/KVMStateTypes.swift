import CKVM

// The x86-64 CPU state as this backend holds it, under the names the rest of the library uses:
// the architecture code (`Arch/X86_64`) fills them in and the run loop reads fields of them,
// but only this folder imports KVM's headers. A second backend defines the same names.

/// Control registers, segment registers and descriptor tables (`struct kvm_sregs`).
typealias SpecialRegisters = kvm_sregs
/// One segment register (`struct kvm_segment`).
typealias SegmentRegister = kvm_segment
/// One CPUID leaf/subleaf as the vCPU is told it (`struct kvm_cpuid_entry2`).
typealias CPUIDEntry = kvm_cpuid_entry2
/// Pending exception and interrupt state (`struct kvm_vcpu_events`).
typealias ExceptionEvents = kvm_vcpu_events
