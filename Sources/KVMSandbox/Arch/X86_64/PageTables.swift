/// Permissions of a guest page, as the guest's program sees them.
public struct PagePermissions: OptionSet, Sendable, Hashable {
    /// The permission bits.
    public let rawValue: UInt8
    /// Permissions from their bits.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The guest may read the page (every mapped user page is readable on x86-64).
    public static let read = PagePermissions(rawValue: 1)
    /// The guest may write the page.
    public static let write = PagePermissions(rawValue: 2)
    /// The guest may execute the page.
    public static let execute = PagePermissions(rawValue: 4)
    /// Only the CPU at CPL 0 may touch the page (GDT, IDT, TSS): the guest program may not.
    public static let supervisor = PagePermissions(rawValue: 8)
}

/// How the guest program wants to use a page, for translations checked like the MMU would.
enum MemoryAccess {
    case read, write, execute
}

/// x86-64 4-level page tables, built by the host inside guest memory.
///
/// The tables live in guest-physical pages that no virtual address maps, so the guest cannot
/// read or write them. Intermediate entries allow everything; the leaf carries the permissions.
struct X86PageTables {
    /// Entry bits.
    static let present: UInt64 = 1 << 0
    static let writable: UInt64 = 1 << 1
    static let user: UInt64 = 1 << 2
    static let accessed: UInt64 = 1 << 5
    static let dirty: UInt64 = 1 << 6
    static let noExecute: UInt64 = 1 << 63
    static let addressMask: UInt64 = 0x000f_ffff_ffff_f000
    /// The guest program may use virtual addresses below this (the lower canonical half).
    static let userAddressLimit: UInt64 = 1 << 47

    /// Guest-physical address of the PML4 (what CR3 holds).
    let root: UInt64

    /// Tables already in memory (a fork's, from its snapshot).
    init(root: UInt64) { self.root = root }

    /// Allocates an empty PML4.
    init(memory: GuestMemory, allocator: inout PhysicalPageAllocator) throws(SandboxError) {
        guard let root = allocator.allocate() else {
            throw .outOfGuestMemory(needed: PageSize.bytes, available: allocator.available)
        }
        self.root = root
    }

    /// The leaf entry bits for `permissions`.
    static func leafBits(_ permissions: PagePermissions) -> UInt64 {
        var bits = present | accessed
        if permissions.contains(.write) { bits |= writable | dirty }
        if !permissions.contains(.supervisor) { bits |= user }
        if !permissions.contains(.execute) { bits |= noExecute }
        return bits
    }

    /// The guest program's permissions a leaf entry grants (the inverse of `leafBits`).
    static func permissions(of entry: UInt64) -> PagePermissions {
        var permissions: PagePermissions = [.read]
        if entry & writable != 0 { permissions.insert(.write) }
        if entry & noExecute == 0 { permissions.insert(.execute) }
        if entry & user == 0 { permissions.insert(.supervisor) }
        return permissions
    }

    private static func index(_ virtual: UInt64, level: Int) -> UInt64 {
        (virtual >> (12 + 9 * UInt64(level))) & 0x1ff
    }

    /// Maps the 4 KiB page at `virtual` to `physical`, allocating intermediate tables as needed.
    /// An existing mapping is replaced.
    func map(_ virtual: UInt64, to physical: UInt64, _ permissions: PagePermissions,
             memory: GuestMemory, allocator: inout PhysicalPageAllocator) throws(SandboxError) {
        precondition(virtual % PageSize.bytes == 0 && physical % PageSize.bytes == 0)
        precondition(virtual < Self.userAddressLimit, "virtual address outside the lower half")
        var table = root
        for level in stride(from: 3, to: 0, by: -1) {
            let slot = table + Self.index(virtual, level: level) * 8
            let entry = memory.load(UInt64.self, at: slot)
            if entry & Self.present != 0 {
                table = entry & Self.addressMask
            } else {
                guard let next = allocator.allocate() else {
                    throw .outOfGuestMemory(needed: PageSize.bytes, available: allocator.available)
                }
                memory.store(next | Self.present | Self.writable | Self.user | Self.accessed, at: slot)
                table = next
            }
        }
        memory.store(physical | Self.leafBits(permissions), at: table + Self.index(virtual, level: 0) * 8)
    }

    /// Calls `body` with every present leaf in `[start, end)` (page-aligned) in address order,
    /// skipping absent tables whole, so a sparse terabyte costs what is mapped in it.
    func forEachLeaf(from start: UInt64, to end: UInt64, memory: GuestMemory, _ body: (UInt64, UInt64) -> Void) {
        func walk(_ table: UInt64, level: Int, base: UInt64) {
            let span = UInt64(1) << (12 + 9 * UInt64(level))
            for index in UInt64(0)..<512 {
                let low = base + index * span
                guard low < end, low + span > start, low < Self.userAddressLimit else { continue }
                let slot = table + index * 8
                guard memory.contains(slot, count: 8) else { return }
                let entry = memory.load(UInt64.self, at: slot)
                guard entry & Self.present != 0 else { continue }
                if level == 0 { body(low, entry) } else { walk(entry & Self.addressMask, level: level - 1, base: low) }
            }
        }
        walk(root, level: 3, base: 0)
    }

    /// The leaf entry for `virtual`, or nil when a level is not present.
    /// Whether replacing leaf entry `old` by `new` takes away an access `old` allowed: user
    /// access, write, execute, or the page itself.
    static func reducesAccess(from old: UInt64, to new: UInt64) -> Bool {
        (old & user != 0 && new & user == 0) || (old & writable != 0 && new & writable == 0)
            || (old & noExecute == 0 && new & noExecute != 0) || (old & addressMask) != (new & addressMask)
    }

    func leafEntry(_ virtual: UInt64, memory: GuestMemory) -> UInt64? {
        leafSlot(virtual, memory: memory).map { memory.load(UInt64.self, at: $0) }
    }

    /// The guest-physical address of the present leaf entry for `virtual`, or nil.
    func leafSlot(_ virtual: UInt64, memory: GuestMemory) -> UInt64? {
        guard virtual < Self.userAddressLimit else { return nil }
        var table = root
        for level in stride(from: 3, through: 0, by: -1) {
            let slot = table + Self.index(virtual, level: level) * 8
            guard memory.contains(slot, count: 8) else { return nil }
            let entry = memory.load(UInt64.self, at: slot)
            guard entry & Self.present != 0 else { return nil }
            if level == 0 { return slot }
            table = entry & Self.addressMask
        }
        return nil
    }

    /// Translates a virtual address as the MMU would for the guest program at CPL 3, or nil when
    /// that access would fault (not present, supervisor-only, read-only, no-execute).
    func translate(_ virtual: UInt64, for access: MemoryAccess, memory: GuestMemory) -> UInt64? {
        guard let entry = leafEntry(virtual, memory: memory), entry & Self.user != 0 else { return nil }
        switch access {
        case .read: break
        case .write: guard entry & Self.writable != 0 else { return nil }
        case .execute: guard entry & Self.noExecute == 0 else { return nil }
        }
        let physical = (entry & Self.addressMask) | (virtual & (PageSize.bytes - 1))
        return memory.contains(physical, count: 1) ? physical : nil
    }

    /// Translates for the host itself (loader, stack builder): any present page, whatever its permissions.
    func translateForHost(_ virtual: UInt64, memory: GuestMemory) -> UInt64? {
        guard let entry = leafEntry(virtual, memory: memory) else { return nil }
        let physical = (entry & Self.addressMask) | (virtual & (PageSize.bytes - 1))
        return memory.contains(physical, count: 1) ? physical : nil
    }
}
