import CKVM
import SystemPackage

/// A KVM VM file descriptor: memory slots and vCPUs hang off it. Closed on deinit.
final class VirtualMachine {
    let fd: FileDescriptor
    /// Kept alive so the system fd outlives every VM created from it.
    let system: KVMSystem

    init(fd: FileDescriptor, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    deinit { try? fd.close() }

    /// Maps `size` bytes of host memory at `hostAddress` to guest-physical `guestPhysicalAddress`.
    func setMemoryRegion(slot: UInt32, guestPhysicalAddress: UInt64, size: UInt64, hostAddress: UInt64,
                         flags: UInt32 = 0) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: flags, guest_phys_addr: guestPhysicalAddress,
            memory_size: size, userspace_addr: hostAddress)
        try kvmIoctl(fd, KVMRequest.setUserMemoryRegion, &region, "KVM_SET_USER_MEMORY_REGION")
    }

    /// `KVM_MEM_LOG_DIRTY_PAGES`: KVM records every page the guest writes in the slot.
    static let logDirtyPages: UInt32 = 1

    /// `KVM_GET_DIRTY_LOG`: fills `bitmap` (one bit per page of the slot) with the pages the guest
    /// wrote since the last call, and write-protects them again.
    func fetchDirtyLog(slot: UInt32, into bitmap: inout [UInt64]) throws(KVMError) {
        let result = bitmap.withUnsafeMutableBytes { buffer in
            var log = kvm_dirty_log()
            log.slot = slot
            log.dirty_bitmap = buffer.baseAddress
            return withUnsafeMutablePointer(to: &log) { ckvmIoctlPointer(fd.rawValue, KVMRequest.getDirtyLog, $0) }
        }
        if result < 0 { throw KVMError("KVM_GET_DIRTY_LOG", .current) }
    }

    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`: `KVM_GET_DIRTY_LOG` then reports without clearing or
    /// write-protecting; `clearDirtyLog` does both, for the pages it names. Before the memslot.
    func enableManualDirtyProtection() throws(KVMError) {
        var cap = kvm_enable_cap()
        cap.cap = UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        cap.args.0 = 1  // KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
        try kvmIoctl(fd, KVMRequest.enableCap, &cap, "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)")
    }

    /// `KVM_CLEAR_DIRTY_LOG` over the whole of `slot` (`pages` long): clears the bits set in
    /// `bitmap` and write-protects those pages again; pages not named stay as they are.
    func clearDirtyLog(slot: UInt32, pages: Int, bitmap: inout [UInt64]) throws(KVMError) {
        let result = bitmap.withUnsafeMutableBytes { buffer in
            var clear = kvm_clear_dirty_log()
            clear.slot = slot
            clear.num_pages = UInt32(pages)
            clear.first_page = 0
            clear.dirty_bitmap = buffer.baseAddress
            return withUnsafeMutablePointer(to: &clear) { ckvmIoctlPointer(fd.rawValue, KVMRequest.clearDirtyLog, $0) }
        }
        if result < 0 { throw KVMError("KVM_CLEAR_DIRTY_LOG", .current) }
    }

    /// Turns on KVM's dirty ring (`KVM_CAP_DIRTY_LOG_RING`) with `entries` per vCPU; only before
    /// any vCPU exists. Then `KVM_GET_DIRTY_LOG` is off and each vCPU has a `DirtyRing`.
    func enableDirtyRing(entries: Int) throws(KVMError) {
        var cap = kvm_enable_cap()
        cap.cap = UInt32(KVM_CAP_DIRTY_LOG_RING)
        cap.args.0 = UInt64(entries * MemoryLayout<kvm_dirty_gfn>.stride)
        try kvmIoctl(fd, KVMRequest.enableCap, &cap, "KVM_ENABLE_CAP(DIRTY_LOG_RING)")
        dirtyRingEntries = entries
    }

    /// Entries per vCPU dirty ring, when it is on.
    private(set) var dirtyRingEntries: Int?

    /// `KVM_RESET_DIRTY_RINGS`: re-arms dirty tracking for the entries marked harvested.
    func resetDirtyRings() throws(KVMError) {
        _ = try kvmIoctl(fd, KVMRequest.resetDirtyRings, 0, "KVM_RESET_DIRTY_RINGS")
    }

    /// Creates vCPU `id` and maps its `kvm_run` page.
    func createVCPU(id: Int = 0) throws(KVMError) -> VirtualCPU {
        let vcpufd = FileDescriptor(rawValue: try kvmIoctl(fd, KVMRequest.createVCPU, UInt(id), "KVM_CREATE_VCPU"))
        do {
            return try VirtualCPU(fd: vcpufd, mmapSize: system.vcpuMmapSize, dirtyRingEntries: dirtyRingEntries)
        } catch {
            try? vcpufd.close()
            throw error
        }
    }
}
