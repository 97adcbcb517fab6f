/// Assembles the KVM side of a micro-VM: a VM with `memory` as its only memslot, and one vCPU
/// starting at `entry` in user mode on `space`'s page tables, with `syscall` routed to the stub.
enum MicroVM {
    static func create(system: KVMSystem, memory: GuestMemory, space: AddressSpace, entry: UInt64,
                       stackPointer: UInt64) throws(KVMError) -> (VirtualMachine, VirtualCPU) {
        let vm = try system.createVM()
        try vm.setMemoryRegion(slot: 0, guestPhysicalAddress: 0, size: memory.size, hostAddress: memory.hostAddress)
        let vcpu = try vm.createVCPU()
        try vcpu.setSpecialRegisters(X86CPUState.specialRegisters(from: try vcpu.specialRegisters(), pageTableRoot: space.tables.root))
        try vcpu.setRegisters(X86CPUState.initialRegisters(entry: entry, stackPointer: stackPointer))
        try vcpu.setMSRs(X86CPUState.syscallMSRs)
        return (vm, vcpu)
    }
}
