/// A program loaded into guest memory: where it is and what the initial stack needs to know.
public struct LoadedProgram: Sendable {
    /// The load base (0 for ET_EXEC; `GuestLayout.pieBase` minus the lowest page for static-PIE).
    public let base: UInt64
    /// The relocated entry point.
    public let entry: UInt64
    /// The guest address of the program headers (AT_PHDR), or 0 when they are not loaded.
    public let programHeaderAddress: UInt64
    /// AT_PHNUM.
    public let programHeaderCount: Int
    /// The first page after the highest segment: where the heap starts.
    public let imageEnd: UInt64
    /// The ELF's symbols (linked addresses; add `base`), parsed at their first use.
    public var symbols: SymbolTable { lazySymbols.table }
    let lazySymbols: LazySymbolTable
    /// The guest addresses the ELF's segments occupy, from the lowest page to `imageEnd`.
    public let imageRange: Range<UInt64>
    /// DWARF line tables and call-frame information, opened on first use (a fault).
    let debugInfo: LazyDebugInfo
    /// The file's path as the guest sees it, when the host knows it (the dynamic loader's).
    public internal(set) var path: String?

    init(base: UInt64, entry: UInt64, programHeaderAddress: UInt64, programHeaderCount: Int, imageEnd: UInt64,
         symbols: LazySymbolTable, imageRange: Range<UInt64>, debugInfo: LazyDebugInfo) {
        (self.base, self.entry, self.programHeaderAddress, self.programHeaderCount) = (base, entry, programHeaderAddress, programHeaderCount)
        (self.imageEnd, self.lazySymbols, self.imageRange, self.debugInfo) = (imageEnd, symbols, imageRange, debugInfo)
    }

    init(base: UInt64, entry: UInt64, programHeaderAddress: UInt64, programHeaderCount: Int, imageEnd: UInt64,
         symbols: SymbolTable, imageRange: Range<UInt64>, debugInfo: LazyDebugInfo) {
        self.init(base: base, entry: entry, programHeaderAddress: programHeaderAddress, programHeaderCount: programHeaderCount,
                  imageEnd: imageEnd, symbols: LazySymbolTable(parsed: symbols), imageRange: imageRange, debugInfo: debugInfo)
    }

    /// `function+0xoffset` for a guest address, when a symbol covers it.
    public func symbolize(_ address: UInt64) -> String? {
        guard address >= base, let (symbol, offset) = symbols.function(containing: address - base) else { return nil }
        return offset == 0 ? symbol.name : "\(symbol.name)+0x\(String(offset, radix: 16))"
    }
}

/// Copies an ELF's PT_LOAD segments into fresh guest pages with the segments' permissions and
/// applies static-PIE relocations.
///
/// Every page gets exactly the permissions its segment asks for: code is read+execute, data is
/// read+write+NX, read-only data is read+NX. A page is writable and executable only when a single
/// segment asks for both, or two segments with different permissions share it.
enum ELFLoader {
    /// Where a file goes in the guest's address space.
    enum Placement {
        /// The program: at its linked addresses (ET_EXEC) or at `GuestLayout.pieBase` (ET_DYN).
        case program
        /// A dynamic loader (ET_DYN): its highest page just below `top`, as the kernel puts
        /// ld.so in the mmap area.
        case below(UInt64)
    }

    /// Loads `elf` into `space`; gives up with `.loadTimedOut` past `deadline` (monotonic ns).
    /// Static-PIE programs are relocated here; a dynamic program and its loader are relocated by
    /// the loader itself.
    /// A position-independent program's lowest page goes at `pieBase` (randomized per VM).
    static func load(_ elf: ELFFile, into space: AddressSpace, at placement: Placement = .program,
                     pieBase: UInt64 = GuestLayout.pieBase, deadline: UInt64? = nil) throws(SandboxError) -> LoadedProgram {
        let loads = elf.loadSegments.filter { $0.memorySize > 0 }
        let lowest = PageSize.alignDown(loads.map(\.virtualAddress).min() ?? 0)
        let base: UInt64, limit: UInt64
        switch placement {
        case .program:
            base = elf.isPositionIndependent ? pieBase &- lowest : 0
            limit = GuestLayout.imageLimit
        case .below(let top):
            guard elf.isPositionIndependent, !elf.isDynamic else {
                throw .invalidELF(.badInterpreter("the dynamic loader must be ET_DYN without an interpreter of its own"))
            }
            let highest = loads.map { $0.virtualAddress &+ $0.memorySize }.max() ?? 0  // ELFFile checked: no overflow
            guard let span = PageSize.alignUp(highest).map({ $0 - lowest }), span < top / 2 else {
                throw .invalidELF(.badInterpreter("the dynamic loader spans more than the address space"))
            }
            base = PageSize.alignDown(top - span) &- lowest
            limit = top
        }

        // Every segment's place, checked, and the pages they need in all, before any per-page
        // work: a file of a few KiB can declare thousands of huge segments.
        var placed: [(start: UInt64, pageEnd: UInt64, permissions: PagePermissions)] = []
        var totalPages: UInt64 = 0
        var imageEnd: UInt64 = 0
        for (index, segment) in elf.segments.enumerated() where segment.type == ELFFile.ptLoad && segment.memorySize > 0 {
            let (start, startOverflow) = segment.virtualAddress.addingReportingOverflow(base)
            let (end, endOverflow) = start.addingReportingOverflow(segment.memorySize)
            guard !startOverflow, !endOverflow, start >= GuestLayout.lowestSegmentAddress,
                  end <= limit, let pageEnd = PageSize.alignUp(end) else {
                throw .invalidELF(.segmentOutsideGuestMemory(index: index, start: start, end: end))
            }
            // Segments do not overlap (ELFFile checks), so distinct pages are at least the sum
            // less one shared boundary page per segment.
            totalPages += (pageEnd - PageSize.alignDown(start)) / PageSize.bytes - 1
            guard totalPages <= space.availableBytes / PageSize.bytes else {
                throw .outOfGuestMemory(needed: (totalPages + 1) * PageSize.bytes, available: space.availableBytes)
            }
            placed.append((PageSize.alignDown(start), pageEnd, segment.permissions))
            imageEnd = max(imageEnd, pageEnd)
        }
        // Page permissions: the union of every segment that touches the page. Sorted and
        // disjoint, segments that share a page with this one start at or before it.
        placed.sort { $0.start < $1.start }
        var page: UInt64 = 0
        for (index, segment) in placed.enumerated() {
            page = max(page, segment.start)
            while page < segment.pageEnd {
                var permissions = segment.permissions
                var next = index + 1
                while next < placed.count, placed[next].start <= page {
                    permissions.formUnion(placed[next].permissions)
                    next += 1
                }
                try space.mapNew(page, length: PageSize.bytes, permissions)
                page += PageSize.bytes
                if let deadline, page % (4096 * PageSize.bytes) == 0, monotonicNanoseconds() > deadline {
                    throw .loadTimedOut
                }
            }
        }
        for segment in loads where segment.fileSize > 0 {
            try hostWrite(elf.bytes[Int(segment.offset)..<Int(segment.offset + segment.fileSize)], at: base + segment.virtualAddress, space)
        }
        if elf.isPositionIndependent, !elf.isDynamic, case .program = placement {
            try relocate(elf, base: base, space: space)
        }
        if let deadline, monotonicNanoseconds() > deadline { throw .loadTimedOut }
        var headers: UInt64 = 0
        if let linked = programHeaderAddress(elf) {
            let (address, overflow) = linked.addingReportingOverflow(base)
            guard !overflow, address < X86PageTables.userAddressLimit else {
                throw .invalidELF(.badProgramHeaderTable("PT_PHDR address 0x\(String(linked, radix: 16)) lies outside the address space"))
            }
            headers = address
        }
        return LoadedProgram(
            base: base, entry: base &+ elf.entry,
            programHeaderAddress: headers,
            programHeaderCount: elf.programHeaderCount, imageEnd: imageEnd, symbols: elf.lazySymbols,
            imageRange: (base &+ lowest)..<imageEnd, debugInfo: LazyDebugInfo(elfBytes: elf.bytes))
    }

    private static func hostWrite(_ bytes: ArraySlice<UInt8>, at address: UInt64, _ space: AddressSpace) throws(SandboxError) {
        do { try space.hostWrite(bytes, at: address) } catch {
            throw .invalidELF(.badRelocations("write to unmapped address 0x\(String(address, radix: 16))"))
        }
    }

    /// Where the program headers are in the (unrelocated) image: PT_PHDR, or the PT_LOAD holding e_phoff.
    private static func programHeaderAddress(_ elf: ELFFile) -> UInt64? {
        if let phdr = elf.segments.first(where: { $0.type == ELFFile.ptPhdr }) { return phdr.virtualAddress }
        let size = UInt64(elf.programHeaderCount) * 56
        return elf.loadSegments.first { segment in
            elf.programHeaderOffset >= segment.offset && elf.programHeaderOffset - segment.offset + size <= segment.fileSize
        }.map { $0.virtualAddress + (elf.programHeaderOffset - $0.offset) }
    }

    /// Applies R_X86_64_RELATIVE relocations from DT_RELA. Idempotent, so a libc that also
    /// relocates itself (musl's rcrt1, glibc's static-PIE start-up) computes the same values
    /// again; R_X86_64_IRELATIVE ones are left to that start-up code.
    private static func relocate(_ elf: ELFFile, base: UInt64, space: AddressSpace) throws(SandboxError) {
        guard let dynamic = elf.segments.first(where: { $0.type == ELFFile.ptDynamic }) else { return }
        let reader = ByteReader(bytes: elf.bytes)
        func fail(_ reason: String) -> SandboxError { .invalidELF(.badRelocations(reason)) }
        guard reader.contains(dynamic.offset, dynamic.fileSize) else { throw fail("PT_DYNAMIC lies outside the file") }
        var rela: UInt64?, relaSize: UInt64 = 0, relaEntry: UInt64 = 24
        do {
            for index in 0..<(dynamic.fileSize / 16) {
                let tag = try reader.integer(UInt64.self, at: dynamic.offset + index * 16, "d_tag")
                let value = try reader.integer(UInt64.self, at: dynamic.offset + index * 16 + 8, "d_val")
                switch tag {
                case 0: break
                case 7: rela = value
                case 8: relaSize = value
                case 9: relaEntry = value
                case 17, 36: throw fail("DT_REL/DT_RELR relocations are not supported (link without -z pack-relative-relocs)")
                default: continue
                }
                if tag == 0 { break }
            }
            guard let rela, relaSize > 0 else { return }
            guard relaEntry == 24 else { throw fail("DT_RELAENT is \(relaEntry), expected 24") }
            guard let offset = elf.fileOffset(ofVirtualAddress: rela, count: relaSize) else {
                throw fail("DT_RELA table lies outside the file")
            }
            for index in 0..<(relaSize / 24) {
                let at = offset + index * 24
                let target = try reader.integer(UInt64.self, at: at, "r_offset")
                let info = try reader.integer(UInt64.self, at: at + 8, "r_info")
                let addend = try reader.integer(UInt64.self, at: at + 16, "r_addend")
                switch info & 0xffff_ffff {
                case 0: continue  // R_X86_64_NONE
                case 8:  // R_X86_64_RELATIVE
                    let value = base &+ addend
                    try hostWrite(value.littleEndianBytes[...], at: base &+ target, space)
                case 37:
                    // R_X86_64_IRELATIVE: the value comes from running a resolver in the guest
                    // (an ifunc), which only the program can do; glibc's static-PIE start-up
                    // (`_dl_relocate_static_pie`) applies these itself (Rust's +crt-static).
                    continue
                default:
                    throw fail("relocation type \(info & 0xffff_ffff) is not supported in a static program")
                }
            }
        } catch let error as SandboxError {
            throw error
        } catch let error as ELFError {
            throw .invalidELF(error)
        } catch {
            throw fail("\(error)")
        }
    }
}
