import CKVM

/// Assembles the KVM side of a micro-VM: a VM with `memory` as its only memslot and one vCPU.
enum MicroVM {
    /// A VM whose vCPU starts at `entry` in user mode on `space`'s page tables, with `syscall`
    /// routed to the stub.
    static func create(system: KVMSystem, memory: GuestMemory, space: AddressSpace, entry: UInt64,
                       stackPointer: UInt64) throws(KVMError) -> (VirtualMachine, VirtualCPU) {
        try create(system: system, memory: memory, logDirtyPages: false,
                   specialRegisters: { X86CPUState.specialRegisters(from: $0, pageTableRoot: space.tables.root) },
                   registers: X86CPUState.initialRegisters(entry: entry, stackPointer: stackPointer))
    }

    /// A VM over `memory` whose vCPU gets the given registers (a fork: a snapshot's), optionally
    /// with KVM's dirty-page log on the memslot.
    static func create(system: KVMSystem, memory: GuestMemory, logDirtyPages: Bool,
                       specialRegisters: (kvm_sregs) -> kvm_sregs,
                       registers: kvm_regs) throws(KVMError) -> (VirtualMachine, VirtualCPU) {
        let vm = try system.createVM()
        try vm.setMemoryRegion(slot: 0, guestPhysicalAddress: 0, size: memory.size, hostAddress: memory.hostAddress,
                               flags: logDirtyPages ? VirtualMachine.logDirtyPages : 0)
        let vcpu = try vm.createVCPU()
        try vcpu.setSpecialRegisters(specialRegisters(try vcpu.specialRegisters()))
        try vcpu.setRegisters(registers)
        try vcpu.setMSRs(X86CPUState.syscallMSRs)
        return (vm, vcpu)
    }
}
