import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Guest-physical memory: a memfd of `size` bytes mapped shared into the host.
/// Unmapped and closed on deinit.
///
/// This type and `VirtualCPU` are the only places that touch raw pointers. Every access is
/// bounds-checked here; callers above deal in guest-physical addresses only.
public final class GuestMemory {
    /// Size in bytes (a multiple of the page size).
    public let size: UInt64
    /// The memfd that backs the memory (later forked copy-on-write).
    let fd: FileDescriptor
    private let base: UnsafeMutableRawPointer

    /// Creates zeroed guest memory of `size` bytes.
    init(size: UInt64) throws(SandboxError) {
        guard size > 0, size % PageSize.bytes == 0, size <= GuestMemory.maximumSize else {
            throw .invalidConfiguration("guest memory must be a positive multiple of 4 KiB up to \(GuestMemory.maximumSize >> 30) GiB")
        }
        let raw = ckvm_memfd_create("kvmsandbox-guest")
        guard raw >= 0 else { throw .hostResource(operation: "memfd_create", errno: .current) }
        let fd = FileDescriptor(rawValue: raw)
        guard ftruncate(raw, off_t(size)) == 0 else {
            let error = Errno.current
            try? fd.close()
            throw .hostResource(operation: "ftruncate(guest memory)", errno: error)
        }
        guard let mapping = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, raw, 0),
              mapping != MAP_FAILED else {
            let error = Errno.current
            try? fd.close()
            throw .hostResource(operation: "mmap(guest memory)", errno: error)
        }
        self.size = size
        self.fd = fd
        self.base = mapping
    }

    deinit {
        munmap(base, Int(size))
        try? fd.close()
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
    }

    /// Copies bytes into guest-physical memory.
    func write<C: Collection<UInt8>>(_ bytes: C, at address: UInt64) {
        let destination = checked(address, bytes.count)
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
    }

    /// Lends a guest-physical range to `body` without copying (e.g. to write(2) guest output).
    func withBytes<R>(at address: UInt64, count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: checked(address, count), count: count))
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
struct PhysicalPageAllocator {
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

    /// Takes `count` contiguous zeroed pages, or nil when memory is exhausted.
    mutating func allocate(pages count: UInt64 = 1) -> UInt64? {
        let bytes = count * PageSize.bytes
        guard bytes / PageSize.bytes == count, bytes <= available else { return nil }
        defer { next += bytes }
        return next
    }
}
