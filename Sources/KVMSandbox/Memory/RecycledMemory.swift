import CHost
#if canImport(Glibc)
import Glibc
#endif

/// Private guest-memory mappings of processes that ended, kept for the next process of the same
/// size (a `fork` copy, an `execve`'s fresh VM). A fresh mapping costs the host a page fault and
/// a kernel `clear_page` per 2 MiB the guest touches, and on a nested host (PVM in a cloud VM)
/// the outer hypervisor's faults too: measured as 7x the copy itself when python forked. A
/// recycled mapping is already populated: the next process gets it with every page it can see
/// zero (or overwritten by its parent's copy), its old contents never visible.
///
/// Bounded: a few mappings per size, and each keeps at most `retainedBytes` populated (the rest
/// is given back to the host before it is pooled).
enum RecycledMemory {
    /// A mapping in the pool. (@unchecked: the pointer is owned by the pool alone until taken.)
    private struct Mapping: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
    }
    private static let pool = HostMutex<[UInt64: [Mapping]]>([:])

    /// Mappings kept per size, and the populated bytes each may keep.
    static let perSize = 4
    static let retainedBytes: UInt64 = 64 << 20

    /// A recycled `size`-byte mapping whose bytes from `zeroFrom` on are zero (below it, the
    /// caller overwrites them), or nil when there is none.
    static func take(size: UInt64, zeroFrom: UInt64) -> UnsafeMutableRawPointer? {
        guard let mapping = pool.withLock({ $0[size]?.popLast() }) else { return nil }
        zeroResidentPages(mapping.base, size: min(size, retainedBytes), from: zeroFrom)
        return mapping.base
    }

    /// Takes `base` (a private anonymous mapping of `size` bytes, no longer used by anyone)
    /// into the pool, or unmaps it when the pool is full.
    static func give(_ base: UnsafeMutableRawPointer, size: UInt64) {
        // SAFETY: [base, base + size) is the caller's whole mapping, used by nothing else now.
        if size > retainedBytes { _ = madvise(base + Int(retainedBytes), Int(size - retainedBytes), MADV_DONTNEED) }
        let kept = pool.withLock { pool -> Bool in
            guard pool[size, default: []].count < perSize else { return false }
            pool[size, default: []].append(Mapping(base: base))
            return true
        }
        if !kept { munmap(base, Int(size)) }
    }

    /// Zeroes the pages of `[from, size)` the host has populated (`mincore`); the others read
    /// as zero already.
    private static func zeroResidentPages(_ base: UnsafeMutableRawPointer, size: UInt64, from: UInt64) {
        guard from < size else { return }
        let start = PageSize.alignDown(from)
        let pages = Int((size - start) / PageSize.bytes)
        var resident = [UInt8](repeating: 0, count: pages)
        // SAFETY: [base + start, base + size) lies inside the mapping.
        guard mincore(base + Int(start), Int(size - start), &resident) == 0 else {
            (base + Int(from)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(size - from))
            return
        }
        var index = 0
        while index < pages {
            guard resident[index] & 1 != 0 else { index += 1; continue }
            var end = index
            while end < pages && resident[end] & 1 != 0 { end += 1 }
            let low = max(start + UInt64(index) * PageSize.bytes, from), high = start + UInt64(end) * PageSize.bytes
            (base + Int(low)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(high - low))
            index = end
        }
    }
}
