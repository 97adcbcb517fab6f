import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Guest-physical memory, mapped into the host: private anonymous memory (a fresh VM's), a memfd
/// mapped shared (a snapshot's), or a private copy-on-write mapping of a snapshot's memfd (a fork).
/// Unmapped, and its memfd closed, on deinit.
///
/// This type and `VirtualCPU` are the only places that touch raw pointers. Every access is
/// bounds-checked here; callers above deal in guest-physical addresses only.
public final class GuestMemory {
    /// How new guest memory is backed on the host.
    enum Backing {
        /// Private anonymous memory, in transparent huge pages where the host allows them
        /// (`MADV_HUGEPAGE`): a fresh VM's. A VM that first touches a page costs the host one
        /// fault per 2 MiB instead of one per 4 KiB, and KVM can map the neighbours of each page
        /// the guest faults on. Nothing can fork from it (a snapshot copies what it uses).
        case privateHugePages
        /// A memfd mapped shared: what forks map copy-on-write (a snapshot's memory).
        case shareable
    }

    /// Size in bytes (a multiple of the page size).
    public let size: UInt64
    /// The memfd that backs shareable memory and forks (a fork's is its snapshot's); nil for
    /// private memory.
    let fd: FileDescriptor?
    /// For a copy-on-write fork: the snapshot memory it reads through, kept alive by this reference.
    let source: GuestMemory?
    private let base: UnsafeMutableRawPointer
    /// Pages the host wrote since the last `takeHostDirtyPages()` (KVM's dirty log sees only the
    /// guest's writes), tracked for forks only.
    /// Behind a lock: the vCPU thread (the vDSO's clock page before each entry, exits) and a
    /// poster (the exitless poller's handlers, a parked VM's arguments) write guest memory at
    /// the same time. An uncontended pthread lock per host write.
    private let hostDirty = HostMutex<(bitmap: [UInt64], pages: [UInt64])?>(nil)

    /// Creates zeroed guest memory of `size` bytes.
    init(size: UInt64, backing: Backing = .shareable) throws(SandboxError) {
        guard size > 0, size % PageSize.bytes == 0, size <= GuestMemory.maximumSize else {
            throw .invalidConfiguration("guest memory must be a positive multiple of 4 KiB up to \(GuestMemory.maximumSize >> 30) GiB")
        }
        self.size = size
        self.source = nil
        switch backing {
        case .privateHugePages:
            if let recycled = RecycledMemory.take(size: size, zeroFrom: 0) { base = recycled } else { base = try Self.mapPrivate(size: size) }
            fd = nil
        case .shareable:
            let raw = chost_memfd_create("kvmsandbox-guest")
            guard raw >= 0 else { throw .hostResource(operation: "memfd_create", errno: .current) }
            let fd = FileDescriptor(rawValue: raw)
            guard ftruncate(raw, off_t(size)) == 0 else {
                let error = Errno.current
                try? fd.close()
                throw .hostResource(operation: "ftruncate(guest memory)", errno: error)
            }
            do {
                base = try Self.map(fd, size: size, flags: MAP_SHARED)
            } catch {
                try? fd.close()
                throw error
            }
            self.fd = fd
        }
    }

    /// A copy-on-write view of `snapshot` (shareable memory): `MAP_PRIVATE` over its memfd. Pages
    /// are shared with the snapshot and every other fork until written; writes stay private.
    init(copyOnWriteOf snapshot: GuestMemory) throws(SandboxError) {
        guard let snapshotFD = snapshot.fd else {
            throw .invalidConfiguration("only shareable guest memory (a snapshot's) can be forked")
        }
        size = snapshot.size
        fd = snapshotFD
        source = snapshot
        base = try Self.map(snapshotFD, size: snapshot.size, flags: MAP_PRIVATE)
        hostDirty.withLock { $0 = ([UInt64](repeating: 0, count: Int((size / PageSize.bytes + 63) / 64)), []) }
    }

    /// A copy of the first `count` bytes of `other` in new private memory of its size (a
    /// process's `fork`): a recycled mapping when there is one (`RecycledMemory`), whose pages
    /// past `count` are zeroed, else a fresh one.
    init(copyingPrefixOf other: GuestMemory, count: UInt64) throws(SandboxError) {
        precondition(count <= other.size)
        size = other.size
        source = nil
        fd = nil
        if let recycled = RecycledMemory.take(size: other.size, zeroFrom: count) { base = recycled } else { base = try Self.mapPrivate(size: other.size) }
        // SAFETY: both mappings are `size` bytes and count <= size.
        base.copyMemory(from: other.base, byteCount: Int(count))
    }

    /// A fresh private anonymous mapping of `size` bytes, in transparent huge pages where the
    /// host allows them. (Advice only: a host without them keeps 4 KiB pages. A child the host
    /// process forks gets none of the guest's memory, and no copy-on-write of it under KVM's feet.)
    private static func mapPrivate(size: UInt64) throws(SandboxError) -> UnsafeMutableRawPointer {
        let base = try map(nil, size: size, flags: MAP_PRIVATE | MAP_ANONYMOUS)
        // SAFETY: `base` is the start of the `size`-byte mapping just made.
        _ = madvise(base, Int(size), MADV_HUGEPAGE)
        _ = madvise(base, Int(size), MADV_DONTFORK)
        return base
    }

    private static func map(_ fd: FileDescriptor?, size: UInt64, flags: Int32) throws(SandboxError) -> UnsafeMutableRawPointer {
        guard let mapping = mmap(nil, Int(size), PROT_READ | PROT_WRITE, flags | MAP_NORESERVE, fd?.rawValue ?? -1, 0),
              mapping != MAP_FAILED else {
            throw .hostResource(operation: "mmap(guest memory)", errno: .current)
        }
        return mapping
    }

    deinit {
        // Private memory goes to the next process of its size (its own backing back under any
        // shared pages first); a memfd's, or a fork's of a snapshot, is unmapped.
        if fd == nil, source == nil, removeOverlays() {
            RecycledMemory.give(base, size: size)
            return
        }
        munmap(base, Int(size))
        if source == nil { try? fd?.close() }
    }

    /// A range of guest-physical pages that maps a shared object instead of this memory's own
    /// backing (`overlay`).
    struct Overlay {
        let physical: UInt64
        let count: UInt64
        /// Kept alive by this record while the overlay is in place.
        let object: SharedMemoryObject
        let offset: UInt64
    }
    /// Overlays in place, and how many were ever made (each may leave the host process a
    /// mapping or two more, so a guest that maps and unmaps forever is bounded).
    private let overlayState = HostMutex<(overlays: [Overlay], made: Int)>(([], 0))

    /// Overlays a VM may make over its life (the host process's mappings are a shared,
    /// limited resource: `vm.max_map_count`).
    static let maximumOverlays = 512

    /// Maps `[offset, offset + count)` of `object` over the guest-physical pages
    /// `[physical, physical + count)` (page-aligned, inside this memory): from now on the guest
    /// and the host read and write the object there, as every other VM overlaying it does. KVM
    /// follows the host mapping (its MMU notifier drops what it cached for the old pages).
    func overlay(_ physical: UInt64, count: UInt64, with object: SharedMemoryObject, at offset: UInt64) -> Errno? {
        guard physical % PageSize.bytes == 0, count % PageSize.bytes == 0, count > 0, contains(physical, count: count),
              offset % PageSize.bytes == 0 else { return .invalidArgument }
        return overlayState.withLock { state -> Errno? in
            guard state.made < Self.maximumOverlays else { return .noMemory }
            guard object.ensureSize(offset + count) else { return .noMemory }
            // SAFETY: [physical, physical + count) lies inside this mapping (checked above); the
            // object's memfd is at least offset + count long.
            guard let mapped = mmap(base + Int(physical), Int(count), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                                    object.fd.rawValue, off_t(offset)), mapped != MAP_FAILED else { return Errno.current }
            state.made += 1
            state.overlays.append(Overlay(physical: physical, count: count, object: object, offset: offset))
            return nil
        }
    }

    /// The overlays in place (a fork of the process maps the same objects at the same places).
    var overlays: [Overlay] { overlayState.withLock { $0.overlays } }

    /// The shared object and its offset behind guest-physical address `physical`, if overlaid.
    func sharedObject(at physical: UInt64) -> (object: SharedMemoryObject, offset: UInt64)? {
        overlayState.withLock { state in
            guard let overlay = state.overlays.first(where: { physical >= $0.physical && physical - $0.physical < $0.count }) else {
                return nil
            }
            return (overlay.object, overlay.offset + (physical - overlay.physical))
        }
    }

    /// Puts this memory's own backing back under the overlaid pages in `[physical, physical +
    /// count)` (all of them by default): zero pages for a fresh VM's memory, the snapshot's pages
    /// for a fork. False when the host refused a mapping (then the rest stays overlaid).
    @discardableResult
    func removeOverlays(_ physical: UInt64 = 0, count: UInt64? = nil) -> Bool {
        let end = count.map { physical &+ $0 } ?? size
        return overlayState.withLock { state in
            var kept: [Overlay] = []
            var failed = false
            for overlay in state.overlays {
                let start = max(overlay.physical, physical), stop = min(overlay.physical + overlay.count, end)
                guard !failed, start < stop else { kept.append(overlay); continue }
                guard restoreBacking(start, count: stop - start) else { failed = true; kept.append(overlay); continue }
                if overlay.physical < start {
                    kept.append(Overlay(physical: overlay.physical, count: start - overlay.physical, object: overlay.object, offset: overlay.offset))
                }
                if stop < overlay.physical + overlay.count {
                    kept.append(Overlay(physical: stop, count: overlay.physical + overlay.count - stop, object: overlay.object,
                                        offset: overlay.offset + (stop - overlay.physical)))
                }
            }
            state.overlays = kept
            return !failed
        }
    }

    /// Maps this memory's own backing over `[physical, physical + count)` again.
    private func restoreBacking(_ physical: UInt64, count: UInt64) -> Bool {
        let flags: Int32, fd: Int32
        if let source { (flags, fd) = (MAP_PRIVATE, source.fd?.rawValue ?? -1) }
        else if let own = self.fd { (flags, fd) = (MAP_SHARED, own.rawValue) }
        else { (flags, fd) = (MAP_PRIVATE | MAP_ANONYMOUS, -1) }
        // SAFETY: the range lies inside this mapping (it was overlaid, and overlays are checked).
        guard let mapped = mmap(base + Int(physical), Int(count), PROT_READ | PROT_WRITE, flags | MAP_FIXED | MAP_NORESERVE,
                                fd, fd < 0 ? 0 : off_t(physical)), mapped != MAP_FAILED else { return false }
        if fd < 0 { _ = madvise(mapped, Int(count), MADV_DONTFORK) }
        return true
    }

    /// The host address of guest-physical page `physical`, for memory shared with a host thread
    /// while the guest runs (the exitless-call mailbox). Valid while this object lives.
    func pagePointer(_ physical: UInt64) -> UnsafeMutableRawPointer {
        precondition(physical % PageSize.bytes == 0)
        return checked(physical, Int(PageSize.bytes))
    }

    /// Makes KVM drop every translation it cached for the guest-physical `pages` (sorted or not)
    /// by briefly taking write permission away from their host mapping: the kernel's MMU
    /// notifier tells KVM, which zaps the shadow (PVM) or nested (EPT/NPT) entries for just those
    /// pages and flushes the guest's TLB. Contents, and a fork's copy-on-write state, stay.
    /// Must not race host writes to these pages (the vCPU is stopped; the mailbox page is never
    /// among them). False when `mprotect` failed (then re-create the memslot instead).
    func invalidateTranslations(ofPages pages: [UInt64]) -> Bool {
        var ranges: [(start: UInt64, end: UInt64)] = []
        for page in pages.sorted() where page < size {
            if let last = ranges.last, last.end == page { ranges[ranges.count - 1].end = page + PageSize.bytes; continue }
            if let last = ranges.last, last.end > page { continue }
            ranges.append((page, page + PageSize.bytes))
        }
        for range in ranges {
            // SAFETY: the range lies inside this mapping (page < size, page-aligned).
            let address = base + Int(range.start)
            let length = Int(range.end - range.start)
            guard mprotect(address, length, PROT_READ) == 0 else { return false }
            guard mprotect(address, length, PROT_READ | PROT_WRITE) == 0 else {
                preconditionFailure("cannot give guest memory its write permission back: \(Errno.current)")
            }
        }
        return true
    }

    /// Pages copied back by `restorePage` so far (a page written twice counts twice).
    private(set) var restoredPages = 0

    /// Notes that the host wrote `[address, address + count)`, for a fork's reset.
    @inline(__always) func noteHostWrite(_ address: UInt64, _ count: Int) {
        guard count > 0 else { return }
        hostDirty.withLock { record in
            guard record != nil else { return }
            var page = address >> PageSize.shift
            let last = (address + UInt64(count) - 1) >> PageSize.shift
            while page <= last {
                let (word, bit) = (Int(page / 64), UInt64(1) << (page % 64))
                if record!.bitmap[word] & bit == 0 {
                    record!.bitmap[word] |= bit
                    record!.pages.append(page)
                }
                page += 1
            }
        }
    }

    /// The pages (guest-physical page numbers) the host wrote since the last call, and forgets them.
    func takeHostDirtyPages() -> [UInt64] {
        hostDirty.withLock { record in
            guard let pages = record?.pages, !pages.isEmpty else { return [] }
            for page in pages { record!.bitmap[Int(page / 64)] = 0 }
            record!.pages.removeAll(keepingCapacity: true)
            return pages
        }
    }

    /// Copies page `page` (a guest-physical page number) back from the snapshot a fork reads through.
    func restorePage(_ page: UInt64) {
        // Page numbers come from KVM's dirty log: out-of-range ones are ignored, never trusted.
        guard page < size >> PageSize.shift else { return }
        restoreRange(page << PageSize.shift, count: PageSize.bytes)
    }

    /// Copies `[physical, physical + count)` (page-aligned) back from the snapshot a fork reads
    /// through, in one copy (a parked VM's arena).
    func restoreRange(_ physical: UInt64, count: UInt64) {
        guard let source, physical % PageSize.bytes == 0, contains(physical, count: count) else { return }
        restoredPages &+= Int(count / PageSize.bytes)
        (base + Int(physical)).copyMemory(from: source.base + Int(physical), byteCount: Int(count))
    }

    /// For a fork: the guest-physical page numbers whose contents differ from the snapshot's
    /// (every page compared; the paranoid reset check).
    func pagesDifferingFromSource() -> [UInt64] {
        guard let source else { return [] }
        var pages: [UInt64] = []
        let count = Int(size / PageSize.bytes), pageBytes = Int(PageSize.bytes)
        for page in 0..<count where memcmp(base + page * pageBytes, source.base + page * pageBytes, pageBytes) != 0 {
            pages.append(UInt64(page))
        }
        return pages
    }

    /// For a fork: the 64-bit words of page `page` (a guest-physical page number) that differ
    /// from the snapshot: their guest-physical addresses, values now and in the snapshot.
    func wordsDifferingFromSource(page: UInt64) -> [(address: UInt64, now: UInt64, source: UInt64)] {
        guard let source, page < size >> PageSize.shift else { return [] }
        let offset = Int(page << PageSize.shift)
        return (0..<Int(PageSize.bytes) / 8).compactMap { index in
            let now = (base + offset + index * 8).loadUnaligned(as: UInt64.self)
            let old = (source.base + offset + index * 8).loadUnaligned(as: UInt64.self)
            return now == old ? nil : (UInt64(offset + index * 8), now, old)
        }
    }

    /// Copies the first `count` bytes of `other` (of the same size) into this memory.
    func copyPrefix(of other: GuestMemory, count: UInt64) {
        precondition(count <= size && count <= other.size)
        base.copyMemory(from: other.base, byteCount: Int(count))
        noteHostWrite(0, Int(count))
    }

    /// The largest guest memory this library creates (the x86-64 layout keeps guest-physical below 64 GiB).
    public static let maximumSize: UInt64 = 64 << 30

    /// The host virtual address of guest-physical address 0, for `KVM_SET_USER_MEMORY_REGION`.
    var hostAddress: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// Whether `[address, address + count)` lies inside guest memory (overflow-safe).
    func contains(_ address: UInt64, count: UInt64) -> Bool {
        let (end, overflow) = address.addingReportingOverflow(count)
        return !overflow && end <= size
    }

    private func checked(_ address: UInt64, _ count: Int) -> UnsafeMutableRawPointer {
        precondition(count >= 0 && contains(address, count: UInt64(count)),
                     "guest-physical access [\(address), +\(count)) outside \(size) bytes")
        return base + Int(address)
    }

    /// Reads a little-endian integer at a guest-physical address.
    func load<T: FixedWidthInteger>(_ type: T.Type, at address: UInt64) -> T {
        T(littleEndian: checked(address, MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }

    /// Writes a little-endian integer at a guest-physical address.
    func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        checked(address, MemoryLayout<T>.size).storeBytes(of: value.littleEndian, as: T.self)
        noteHostWrite(address, MemoryLayout<T>.size)
    }

    /// Copies bytes into guest-physical memory.
    func write<C: Collection<UInt8>>(_ bytes: C, at address: UInt64) {
        let destination = checked(address, bytes.count)
        noteHostWrite(address, bytes.count)
        let copied: Void? = bytes.withContiguousStorageIfAvailable { source in
            destination.copyMemory(from: source.baseAddress!, byteCount: source.count)
        }
        if copied == nil {
            for (offset, byte) in bytes.enumerated() { destination.storeBytes(of: byte, toByteOffset: offset, as: UInt8.self) }
        }
    }

    /// Copies bytes out of guest-physical memory.
    func read(at address: UInt64, count: Int) -> [UInt8] {
        let source = checked(address, count)
        return [UInt8](UnsafeRawBufferPointer(start: source, count: count))
    }

    /// Fills a guest-physical range with zeros.
    func zero(at address: UInt64, count: Int) {
        checked(address, count).initializeMemory(as: UInt8.self, repeating: 0, count: count)
        noteHostWrite(address, count)
    }

    /// Lends a guest-physical range to `body` without copying (e.g. to write(2) guest output).
    func withBytes<R>(at address: UInt64, count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: checked(address, count), count: count))
    }

    /// Reads up to `count` bytes of host file `fd` at `offset` straight into guest-physical
    /// memory (`pread`, retried after EINTR): the number read, short only at the end of the file,
    /// or -errno when nothing could be read.
    func readFile(_ fd: Int32, offset: UInt64, into address: UInt64, count: Int) -> Int {
        let destination = checked(address, count)
        noteHostWrite(address, count)
        var done = 0
        while done < count {
            // SAFETY: `checked` proved [address, address + count) inside the mapping.
            let n = pread(fd, destination + done, count - done, off_t(truncatingIfNeeded: offset &+ UInt64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                return done > 0 ? done : -Int(errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Fills a guest-physical range with bytes from the host's random source.
    func fillRandom(at address: UInt64, count: Int) {
        var generator = SystemRandomNumberGenerator()
        var offset = 0
        while offset < count {
            let word = generator.next()
            let n = min(8, count - offset)
            withUnsafeBytes(of: word) { write($0.prefix(n), at: address + UInt64(offset)) }
            offset += n
        }
    }
}

/// The x86-64 base page size.
enum PageSize {
    static let bytes: UInt64 = 4096
    static let shift: UInt64 = 12

    /// Rounds down to a page boundary.
    static func alignDown(_ value: UInt64) -> UInt64 { value & ~(bytes - 1) }
    /// Rounds up to a page boundary, or nil on overflow.
    static func alignUp(_ value: UInt64) -> UInt64? {
        let (sum, overflow) = value.addingReportingOverflow(bytes - 1)
        return overflow ? nil : alignDown(sum)
    }
}

/// Hands out guest-physical pages from a bump pointer; the guest's memory limit is where it stops.
///
/// Every page it hands out is zero, without being written: pages are never freed, so a page at
/// or above `next` has never been used. In a fresh VM it is an untouched memfd page; in a fork
/// it is the snapshot's (zero: snapshots copy only the pages below `next`), or a page a request
/// used and `reset()` restored to that.
struct PhysicalPageAllocator: Codable {
    /// The next free guest-physical address.
    private(set) var next: UInt64
    /// One past the last usable guest-physical address.
    let limit: UInt64

    init(start: UInt64, limit: UInt64) {
        self.next = start
        self.limit = limit
    }

    /// Bytes not yet handed out.
    var available: UInt64 { limit - next }

    /// Takes `count` contiguous zero pages, or nil when memory is exhausted.
    mutating func allocate(pages count: UInt64 = 1) -> UInt64? {
        let bytes = count * PageSize.bytes
        guard bytes / PageSize.bytes == count, bytes <= available else { return nil }
        defer { next += bytes }
        return next
    }
}
