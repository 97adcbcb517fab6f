import CKVM

/// Assembles the KVM side of a micro-VM: a VM with `memory` as its only memslot and one vCPU.
enum MicroVM {
    /// A VM whose vCPU starts at `entry` in user mode on `space`'s page tables, with `syscall`
    /// routed to the stub.
    static func create(system: KVMSystem, memory: GuestMemory, space: AddressSpace, entry: UInt64,
                       stackPointer: UInt64, exceptionStubs: Bool, exitlessSyscalls: Bool = false) throws(KVMError) -> (VirtualMachine, VirtualCPU) {
        try create(system: system, memory: memory, dirtyTracking: nil, exceptionStubs: exceptionStubs, exitlessSyscalls: exitlessSyscalls,
                   specialRegisters: { X86CPUState.specialRegisters(from: $0, pageTableRoot: space.tables.root,
                                                                     exceptionStubs: exceptionStubs) },
                   registers: X86CPUState.initialRegisters(entry: entry, stackPointer: stackPointer))
    }

    /// A VM over `memory` whose vCPU gets the given registers (a fork: a snapshot's), optionally
    /// with KVM's dirty-page tracking on the memslot.
    /// `exitlessSyscalls`: LSTAR at the exitless stub (PVM; a fork then takes its snapshot's LSTAR anyway).
    static func create(system: KVMSystem, memory: GuestMemory, dirtyTracking: DirtyTracking?, exceptionStubs: Bool,
                       exitlessSyscalls: Bool = false, specialRegisters: (kvm_sregs) -> kvm_sregs,
                       registers: GuestRegisters) throws(KVMError) -> (VirtualMachine, VirtualCPU) {
        let vm = try system.createVM()
        if dirtyTracking == .ring { try vm.enableDirtyRing(entries: DirtyTracking.ringEntries) }
        if dirtyTracking == .hotPages { try vm.enableManualDirtyProtection() }
        try vm.setMemoryRegion(slot: 0, guestPhysicalAddress: 0, size: memory.size, hostAddress: memory.hostAddress,
                               flags: dirtyTracking == nil ? 0 : VirtualMachine.logDirtyPages)
        let vcpu = try vm.createVCPU()
        // A CPUID and XSAVE set-up of our choosing. On hardware KVM it is what the guest's CPUID
        // answers; under PVM the guest's CPUID still answers natively, but KVM saves and restores
        // only the XSAVE components the vCPU's XCR0 enables: without AVX there, the upper halves
        // of the YMM registers were neither saved with a thread, a snapshot or a reset, nor
        // isolated from this process's own (measured: every thread switch lost them).
        let identity = X86CPUIdentity.guestIdentity(supported: try system.supportedCPUID(), nativeCPUID: system.platform == .pvm)
        try vcpu.setCPUID(identity.cpuid)
        let xcr0 = identity.xcr0
        var sregs = specialRegisters(try vcpu.specialRegisters())
        if xcr0 != nil { sregs.cr4 |= X86CPUIdentity.cr4OSXSAVE }
        try vcpu.setSpecialRegisters(sregs)
        if let xcr0 { try vcpu.setXCR0(xcr0) }

        try vcpu.setRegisters(registers)
        let cpl0Entry = exceptionStubs && system.platform.syscallEntersCPL0
        try vcpu.setMSRs(X86CPUState.syscallMSRs(cpl0Entry: cpl0Entry, exitless: exitlessSyscalls))
        return (vm, vcpu)
    }
}

/// How a fork learns which pages its guest wrote, for `reset()`.
public enum DirtyTracking: String, Sendable, CaseIterable {
    /// `KVM_GET_DIRTY_LOG`: one bit per page of memory, fetched and scanned whole at each reset.
    case bitmap
    /// The bitmap with manual protection (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`): a page dirtied
    /// by `hotResets` resets in a row stays writable and is copied back at every reset from
    /// then on, without tracking (every `coolingInterval` resets all pages are protected again
    /// to find out which still are hot). A request that dirties the same hundreds of pages
    /// each time (an interpreter's heap) then takes no write-protect fault on them (~6-15 us
    /// each on PVM) at the cost of a 4 KiB copy each (~1 us).
    case hotPages
    /// `KVM_CAP_DIRTY_LOG_RING`: KVM lists each written page; a reset reads just those entries.
    case ring

    /// Dirty-ring entries per vCPU (16 bytes each); a guest that dirties more pages between
    /// resets costs one extra exit per ring-full.
    static let ringEntries = 4096

    /// The faster method this KVM supports (the ring, measured in `kvmsandbox bench`), else the bitmap.
    public static func preferred(on system: KVMSystem) -> DirtyTracking {
        system.checkExtension(KVM_CAP_DIRTY_LOG_RING) >= ringEntries * 16 ? .ring : .bitmap
    }
}
