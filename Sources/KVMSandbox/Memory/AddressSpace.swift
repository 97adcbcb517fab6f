/// A guest address the guest program may not access the way it asked; host calls return `-EFAULT`.
public struct GuestMemoryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The first byte of the range that failed.
    public let address: UInt64
    /// The length that was asked for.
    public let count: UInt64

    /// A bad access of `count` bytes at `address` (handlers may throw it for their own checks).
    public init(address: UInt64, count: UInt64) {
        self.address = address
        self.count = count
    }

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String { "bad guest address 0x\(String(address, radix: 16)) (+\(count) bytes)" }
}

/// The guest's virtual address space: guest-physical memory, the page tables over it, and the
/// allocator that hands out physical pages as the guest's mappings grow.
final class AddressSpace {
    let memory: GuestMemory
    private(set) var allocator: PhysicalPageAllocator
    let tables: X86PageTables

    /// Whether translations were added since creation or the last `restore`: then a vCPU's
    /// cached translations (PVM's shadow pages, a TLB) must be dropped when it is reset.
    private(set) var translationsChanged = false
    /// Requests for memory refused because guest memory (`SandboxConfiguration.memorySize`) was
    /// used up: the guest hit its `--memory`.
    private(set) var memoryRefusals = 0

    /// The allocator position: with the page tables in guest memory, all a snapshot needs.
    var allocatorState: PhysicalPageAllocator { allocator }

    /// An address space whose tables and pages are already in `memory` (a fork of a snapshot).
    init(memory: GuestMemory, tablesRoot: UInt64, allocator: PhysicalPageAllocator) {
        self.memory = memory
        self.tables = X86PageTables(root: tablesRoot)
        self.allocator = allocator
    }

    /// Puts the allocator back to a snapshot's position (its memory is restored separately).
    func restore(allocator: PhysicalPageAllocator) {
        self.allocator = allocator
        translationsChanged = false
    }

    init(memory: GuestMemory) throws(SandboxError) {
        self.memory = memory
        // Guest-physical page 0 is left unused, so no table or page ever sits at physical 0.
        var allocator = PhysicalPageAllocator(start: PageSize.bytes, limit: memory.size)
        self.tables = try X86PageTables(memory: memory, allocator: &allocator)
        self.allocator = allocator
    }

    /// Bytes of guest-physical memory not yet used.
    var availableBytes: UInt64 { allocator.available }

    /// Maps fresh zeroed pages over `[start, start + length)` (page-aligned) with `permissions`.
    /// Fails before mapping anything when the pages and the tables they may need do not fit.
    func mapNew(_ start: UInt64, length: UInt64, _ permissions: PagePermissions) throws(SandboxError) {
        precondition(start % PageSize.bytes == 0 && length % PageSize.bytes == 0)
        translationsChanged = true
        let pages = length / PageSize.bytes
        guard hasRoom(forPages: pages) else {
            memoryRefusals += 1
            throw .outOfGuestMemory(needed: length, available: allocator.available)
        }
        var page = start
        while page < start + length {
            guard let physical = allocator.allocate() else {
                memoryRefusals += 1
                throw .outOfGuestMemory(needed: start + length - page, available: allocator.available)
            }
            // Fresh pages are zero already (see `PhysicalPageAllocator`): touching them to zero
            // them would only make the host allocate them early.
            try tables.map(page, to: physical, permissions, memory: memory, allocator: &allocator)
            page += PageSize.bytes
        }
    }

    /// Whether `pages` new pages and the tables they may need (page tables, directories, PDPTs
    /// the range may touch) fit in the memory not yet used.
    private func hasRoom(forPages pages: UInt64) -> Bool {
        (pages + 3 * (pages / 512 + 2)) * PageSize.bytes <= allocator.available
    }

    /// Maps fresh zeroed pages over `[start, start + length)` backed by one contiguous
    /// guest-physical range, whose start it returns (a parked VM's arena: one copy restores it).
    func mapNewContiguous(_ start: UInt64, length: UInt64, _ permissions: PagePermissions) throws(SandboxError) -> UInt64 {
        precondition(start % PageSize.bytes == 0 && length % PageSize.bytes == 0 && length > 0)
        let pages = length / PageSize.bytes
        guard hasRoom(forPages: pages), let physical = allocator.allocate(pages: pages) else {
            throw .outOfGuestMemory(needed: length, available: allocator.available)
        }
        translationsChanged = true
        for index in 0..<pages {
            try tables.map(start + index * PageSize.bytes, to: physical + index * PageSize.bytes, permissions,
                           memory: memory, allocator: &allocator)
        }
        return physical
    }

    /// Maps `page` to a guest-physical address past the end of guest memory: the guest's writes
    /// there are MMIO exits (the doorbell trap). The host never reads or writes through it.
    func mapOutsideMemory(_ page: UInt64, _ permissions: PagePermissions) throws(SandboxError) {
        translationsChanged = true
        try tables.map(page, to: memory.size, permissions, memory: memory, allocator: &allocator)
    }

    /// Changes the permissions of an already mapped page, keeping its contents. A page that
    /// loses user access, write or execute permission is noted in `takeReducedPages()`: a
    /// translation KVM cached for it must be dropped before the guest runs again. (Gained
    /// permissions need nothing: the next access faults and KVM walks the tables afresh.)
    /// `notingChange: false` leaves `translationsChanged` alone, for a caller that drops the
    /// page's translations itself when it takes the permission back (a parked VM's reset).
    func protect(_ page: UInt64, _ permissions: PagePermissions, notingChange: Bool = true) throws(SandboxError) {
        guard let entry = tables.leafEntry(page, memory: memory),
              let physical = tables.translateForHost(page, memory: memory) else { return }
        if notingChange { translationsChanged = true }
        try tables.map(page, to: physical, permissions, memory: memory, allocator: &allocator)
        if let updated = tables.leafEntry(page, memory: memory), X86PageTables.reducesAccess(from: entry, to: updated) {
            reducedPages.append(PageSize.alignDown(physical))
        }
    }

    /// Guest-physical pages whose mapping lost permissions since the last call (see `protect`).
    func takeReducedPages() -> [UInt64] {
        defer { reducedPages.removeAll(keepingCapacity: true) }
        return reducedPages
    }
    private var reducedPages: [UInt64] = []

    /// Zeroes the (mapped) pages of `[start, start + length)`.
    func zeroMapped(_ start: UInt64, length: UInt64) {
        try? withPhysicalChunks(start, count: length, access: nil) { physical, count in
            memory.zero(at: physical, count: count)
        }
    }

    /// Whether a virtual page is mapped at all.
    func isMapped(_ page: UInt64) -> Bool { tables.leafEntry(page, memory: memory) != nil }

    /// Walks `[address, address + count)` page by page as guest-physical chunks, after checking that
    /// every page allows `access` (`nil` access: the host's own view, any mapped page).
    /// Nothing is touched unless the whole range is valid.
    func withPhysicalChunks(_ address: UInt64, count: UInt64, access: MemoryAccess?,
                            _ body: (_ physical: UInt64, _ length: Int) throws -> Void) throws {
        let fault = GuestMemoryError(address: address, count: count)
        guard count > 0 else { return }
        let (end, overflow) = address.addingReportingOverflow(count)
        guard !overflow, count <= memory.size, end <= X86PageTables.userAddressLimit else { throw fault }
        var chunks: [(UInt64, Int)] = []
        chunks.reserveCapacity(Int(count / PageSize.bytes) + 2)
        var cursor = address
        while cursor < end {
            guard let chunk = physicalChunk(at: cursor, end: end, access: access) else { throw fault }
            chunks.append(chunk)
            cursor += UInt64(chunk.length)
        }
        for (physical, length) in chunks { try body(physical, length) }
    }

    /// The guest-physical address of `cursor` and the bytes from it to the end of its page (or
    /// to `end`), when its page allows `access` (nil: the host's view, any mapped page) and lies
    /// in guest memory: a translation may lead outside it (the MMIO doorbell), never for the host.
    private func physicalChunk(at cursor: UInt64, end: UInt64, access: MemoryAccess?) -> (physical: UInt64, length: Int)? {
        let pageEnd = PageSize.alignDown(cursor) + PageSize.bytes
        let length = Int(min(pageEnd, end) - cursor)
        let physical = access.map { tables.translate(cursor, for: $0, memory: memory) }
            ?? tables.translateForHost(cursor, memory: memory)
        guard let physical, physical < memory.size, UInt64(length) <= memory.size - physical else { return nil }
        return (physical, length)
    }

    /// Reads up to `count` bytes of host file `fd` at `offset` into `[address, address + count)`
    /// without a bounce buffer, page runs that allow `access` (nil: the host's view, any mapped
    /// page) at a time. As Linux's `read`: the number read, short at the end of the file or
    /// before the first page that does not allow `access` (nothing written past it); throws
    /// `GuestMemoryError` when that page comes before any byte was read; -errno when `pread` fails
    /// before any byte was read.
    func readFile(_ fd: Int32, offset: UInt64, into address: UInt64, count: UInt64, access: MemoryAccess?) throws -> Int {
        let (end, overflow) = address.addingReportingOverflow(count)
        guard !overflow, count <= memory.size, end <= X86PageTables.userAddressLimit else {
            throw GuestMemoryError(address: address, count: count)
        }
        var done = 0
        var cursor = address
        while cursor < end {
            // The next run of guest-physically contiguous pages (the allocator hands out runs).
            var run: (physical: UInt64, length: Int)?
            while cursor < end, let chunk = physicalChunk(at: cursor, end: end, access: access) {
                if let current = run {
                    guard current.physical + UInt64(current.length) == chunk.physical else { break }
                    run = (current.physical, current.length + chunk.length)
                } else {
                    run = chunk
                }
                cursor += UInt64(chunk.length)
            }
            guard let run else {
                // A page that does not allow the access: what was read so far, or the fault.
                if done > 0 { return done }
                throw GuestMemoryError(address: address, count: count)
            }
            let n = memory.readFile(fd, offset: offset &+ UInt64(done), into: run.physical, count: run.length)
            if n < 0 { return done > 0 ? done : n }
            done += n
            if n < run.length { break }
        }
        return done
    }

    /// Reads bytes at a virtual address as the host (ignores page permissions; pages must be mapped).
    func hostRead(_ address: UInt64, count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        try withPhysicalChunks(address, count: UInt64(count), access: nil) { physical, length in
            memory.withBytes(at: physical, count: length) { result.append(contentsOf: $0) }
        }
        return result
    }

    /// Writes bytes at a virtual address as the host (ignores page permissions; pages must be mapped).
    func hostWrite(_ bytes: [UInt8], at address: UInt64) throws {
        try hostWrite(bytes[...], at: address)
    }

    /// Writes a slice of bytes at a virtual address as the host, without copying it first.
    func hostWrite(_ bytes: ArraySlice<UInt8>, at address: UInt64) throws {
        var offset = bytes.startIndex
        try withPhysicalChunks(address, count: UInt64(bytes.count), access: nil) { physical, length in
            memory.write(bytes[offset..<offset + length], at: physical)
            offset += length
        }
    }
}

/// Bounds- and permission-checked access to the guest program's memory, by guest virtual address,
/// exactly as the guest itself could access it: unmapped, supervisor-only or (for writes)
/// read-only pages, and ranges that overflow, throw `GuestMemoryError`.
public struct GuestMemoryView {
    let space: AddressSpace

    /// Reads `count` bytes at `address`.
    public func read(_ address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        guard count >= 0 else { throw GuestMemoryError(address: address, count: UInt64(bitPattern: Int64(count))) }
        var result = [UInt8]()
        result.reserveCapacity(min(count, Int(space.memory.size)))
        try rethrowingMemoryError {
            try space.withPhysicalChunks(address, count: UInt64(count), access: .read) { physical, length in
                space.memory.withBytes(at: physical, count: length) { result.append(contentsOf: $0) }
            }
        }
        return result
    }

    /// Writes `bytes` at `address`; nothing is written unless the whole range is writable.
    public func write(_ bytes: [UInt8], to address: UInt64) throws(GuestMemoryError) {
        var offset = 0
        try rethrowingMemoryError {
            try space.withPhysicalChunks(address, count: UInt64(bytes.count), access: .write) { physical, length in
                space.memory.write(bytes[offset..<offset + length], at: physical)
                offset += length
            }
        }
    }

    /// Throws unless the guest could write all of `count` bytes at `address` (checks only;
    /// for calls that must know before they consume data).
    public func checkWritable(_ address: UInt64, count: Int) throws(GuestMemoryError) {
        guard count >= 0 else { throw GuestMemoryError(address: address, count: UInt64(bitPattern: Int64(count))) }
        try rethrowingMemoryError {
            try space.withPhysicalChunks(address, count: UInt64(count), access: .write) { _, _ in }
        }
    }

    /// Reads a little-endian integer at `address`.
    public func load<T: FixedWidthInteger>(_ type: T.Type, at address: UInt64) throws(GuestMemoryError) -> T {
        let bytes = try read(address, count: MemoryLayout<T>.size)
        return T(littleEndianBytes: bytes)
    }

    /// Writes a little-endian integer at `address`.
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        try write(value.littleEndianBytes, to: address)
    }

    /// Reads a NUL-terminated string of at most `maxLength` bytes (not counting the NUL).
    /// Throws when the string is unterminated within the limit or runs into an inaccessible page.
    public func readCString(_ address: UInt64, maxLength: Int) throws(GuestMemoryError) -> String {
        var bytes: [UInt8] = []
        var cursor = address
        while bytes.count <= maxLength {
            // Read up to the end of the current page, so a string ending before an unmapped page works.
            // Computed without overflow: the guest's pointer may be in the last page of 2^64.
            let pageRemaining = Int(PageSize.bytes - cursor & (PageSize.bytes - 1))
            let chunk = try read(cursor, count: min(pageRemaining, maxLength + 1 - bytes.count))
            if let nul = chunk.firstIndex(of: 0) {
                bytes.append(contentsOf: chunk[..<nul])
                return String(decoding: bytes, as: UTF8.self)
            }
            bytes.append(contentsOf: chunk)
            cursor += UInt64(chunk.count)  // the read succeeded, so cursor + count is a user address
        }
        throw GuestMemoryError(address: address, count: UInt64(maxLength))
    }

    /// Lends the guest bytes at `[address, address + count)` to `body` chunk by chunk without copying.
    func withReadableChunks(_ address: UInt64, count: UInt64,
                            _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        try space.withPhysicalChunks(address, count: count, access: .read) { physical, length in
            try space.memory.withBytes(at: physical, count: length, body)
        }
    }

    private func rethrowingMemoryError(_ body: () throws -> Void) throws(GuestMemoryError) {
        do { try body() } catch let error as GuestMemoryError { throw error } catch {
            preconditionFailure("unexpected error \(error)")
        }
    }
}
