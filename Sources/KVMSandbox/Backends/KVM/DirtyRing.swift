import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A vCPU's dirty ring (`KVM_CAP_DIRTY_LOG_RING`), mapped from the vCPU fd: KVM appends one
/// `kvm_dirty_gfn` per page the guest writes, so harvesting costs what was dirtied, not the size
/// of memory (the bitmap of `KVM_GET_DIRTY_LOG` is scanned whole). Unmapped on deinit.
final class DirtyRing {
    private let entries: UnsafeMutablePointer<kvm_dirty_gfn>
    private let count: Int
    /// `KVM_DIRTY_GFN_F_DIRTY` and `KVM_DIRTY_GFN_F_RESET` (`_BITUL` macros Swift cannot import).
    static let dirtyFlag: UInt32 = 1 << 0, resetFlag: UInt32 = 1 << 1
    /// The next entry to look at (entries are consumed in order, wrapping).
    private var fetchIndex = 0

    init(vcpu fd: FileDescriptor, entries count: Int) throws(KVMError) {
        let bytes = count * MemoryLayout<kvm_dirty_gfn>.stride
        let offset = off_t(KVM_DIRTY_LOG_PAGE_OFFSET) * off_t(sysconf(Int32(_SC_PAGESIZE)))
        guard let mapping = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, offset),
              mapping != MAP_FAILED else {
            throw KVMError("mmap(dirty ring)", .current)
        }
        entries = mapping.bindMemory(to: kvm_dirty_gfn.self, capacity: count)
        self.count = count
    }

    deinit { munmap(entries, count * MemoryLayout<kvm_dirty_gfn>.stride) }

    /// Passes each newly dirtied (slot, page offset in the slot) to `body` and marks it harvested.
    /// Call `VirtualMachine.resetDirtyRings()` afterwards; only while the vCPU is not running.
    func harvest(_ body: (_ slot: UInt32, _ page: UInt64) -> Void) {
        while true {
            let entry = entries + (fetchIndex % count)
            guard entry.pointee.flags & DirtyRing.dirtyFlag != 0 else { return }
            body(entry.pointee.slot, entry.pointee.offset)
            entry.pointee.flags = DirtyRing.resetFlag
            fetchIndex += 1
        }
    }
}
