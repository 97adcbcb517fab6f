/// A parsed, validated ELF64 x86-64 executable: static (ET_EXEC or static-PIE ET_DYN), dynamic
/// (with a PT_INTERP naming its dynamic loader), or a dynamic loader itself (ET_DYN, no PT_INTERP).
///
/// Parsing checks every offset and size against the file; loading (`ELFLoader`) then checks the
/// segments against guest memory. Nothing here trusts the file.
public struct ELFFile: Sendable {
    /// A program header.
    public struct Segment: Sendable, Equatable {
        /// p_type (1 = PT_LOAD, ...).
        public let type: UInt32
        /// p_flags (PF_R, PF_W, PF_X).
        public let flags: UInt32
        /// p_offset: where the segment's bytes start in the file.
        public let offset: UInt64
        /// p_vaddr: its linked address.
        public let virtualAddress: UInt64
        /// p_filesz: bytes taken from the file.
        public let fileSize: UInt64
        /// p_memsz: bytes in memory (the rest zero).
        public let memorySize: UInt64

        /// Read, write and execute permissions from PF_R/PF_W/PF_X.
        public var permissions: PagePermissions {
            var result: PagePermissions = []
            if flags & 4 != 0 { result.insert(.read) }
            if flags & 2 != 0 { result.insert(.write) }
            if flags & 1 != 0 { result.insert(.execute) }
            return result
        }
    }

    static let ptLoad: UInt32 = 1, ptDynamic: UInt32 = 2, ptInterp: UInt32 = 3, ptPhdr: UInt32 = 6
    static let etExec: UInt16 = 2, etDyn: UInt16 = 3

    /// The file's bytes.
    public let bytes: [UInt8]
    /// ET_EXEC (2) or ET_DYN (3).
    public let type: UInt16
    /// The entry point, unrelocated.
    public let entry: UInt64
    /// File offset of the program headers (for AT_PHDR).
    public let programHeaderOffset: UInt64
    /// How many program headers there are (AT_PHNUM).
    public let programHeaderCount: Int
    /// All program headers.
    public let segments: [Segment]
    /// The dynamic loader PT_INTERP names (`/lib64/ld-linux-x86-64.so.2`), nil for a static program.
    public let interpreter: String?
    /// Function and object symbols from `.symtab`, sorted by address (empty when stripped).
    public var symbols: SymbolTable { lazySymbols.table }
    /// Parsed at the first use: most programs never fault, and every `execve` would pay for a
    /// table only a report reads (measured: 4% of a posix_spawn + exec).
    let lazySymbols: LazySymbolTable

    /// Whether the program needs a dynamic loader.
    public var isDynamic: Bool { interpreter != nil }
    /// Whether the file is position-independent and must be loaded at a base the host picks.
    public var isPositionIndependent: Bool { type == Self.etDyn }
    /// The PT_LOAD segments.
    public var loadSegments: [Segment] { segments.filter { $0.type == Self.ptLoad } }

    /// Parses and validates `bytes`.
    public init(bytes: [UInt8]) throws(ELFError) {
        try self.init(bytes: bytes, requireEntry: true)
    }

    /// Parses `bytes`; a shared library read only for its symbols may have no entry point.
    init(bytes: [UInt8], requireEntry: Bool) throws(ELFError) {
        let reader = ByteReader(bytes: bytes)
        guard bytes.count >= 4, bytes[0] == 0x7f, bytes[1] == 0x45, bytes[2] == 0x4c, bytes[3] == 0x46 else {
            throw .notELF
        }
        guard bytes.count >= 64 else { throw .truncated(what: "the ELF header") }
        guard bytes[4] == 2 else { throw .not64Bit }
        guard bytes[5] == 1 else { throw .notLittleEndian }
        let type = try reader.integer(UInt16.self, at: 16, "e_type")
        let machine = try reader.integer(UInt16.self, at: 18, "e_machine")
        guard machine == 62 else { throw .wrongMachine(machine) }
        guard type == Self.etExec || type == Self.etDyn else { throw .notExecutable(type: type) }
        let entry = try reader.integer(UInt64.self, at: 24, "e_entry")
        let phoff = try reader.integer(UInt64.self, at: 32, "e_phoff")
        let phentsize = try reader.integer(UInt16.self, at: 54, "e_phentsize")
        let phnum = try reader.integer(UInt16.self, at: 56, "e_phnum")
        guard phnum > 0 else { throw .badProgramHeaderTable("e_phnum is 0") }
        guard phentsize == 56 else { throw .badProgramHeaderTable("e_phentsize is \(phentsize), expected 56") }
        guard reader.contains(phoff, UInt64(phnum) * 56) else { throw .truncated(what: "the program-header table") }

        var segments: [Segment] = []
        var interpreter: String?
        for index in 0..<UInt64(phnum) {
            let at = phoff + index * 56
            let segment = Segment(
                type: try reader.integer(UInt32.self, at: at, "p_type"),
                flags: try reader.integer(UInt32.self, at: at + 4, "p_flags"),
                offset: try reader.integer(UInt64.self, at: at + 8, "p_offset"),
                virtualAddress: try reader.integer(UInt64.self, at: at + 16, "p_vaddr"),
                fileSize: try reader.integer(UInt64.self, at: at + 32, "p_filesz"),
                memorySize: try reader.integer(UInt64.self, at: at + 40, "p_memsz"))
            if segment.type == Self.ptInterp {
                guard interpreter == nil else { throw .badInterpreter("more than one PT_INTERP") }
                guard let path = reader.cString(at: segment.offset, limit: 4096), path.hasPrefix("/") else {
                    throw .badInterpreter("not a NUL-terminated absolute path within the file")
                }
                interpreter = path
            }
            segments.append(segment)
        }
        try Self.validateLoadSegments(segments, reader: reader, entry: entry, requireEntry: requireEntry)

        self.bytes = bytes
        self.type = type
        self.entry = entry
        self.programHeaderOffset = phoff
        self.programHeaderCount = Int(phnum)
        self.segments = segments
        self.interpreter = interpreter
        self.lazySymbols = LazySymbolTable(reader)
    }

    private static func validateLoadSegments(_ segments: [Segment], reader: ByteReader, entry: UInt64,
                                             requireEntry: Bool) throws(ELFError) {
        var ranges: [(index: Int, start: UInt64, end: UInt64)] = []
        for (index, segment) in segments.enumerated() where segment.type == ptLoad {
            guard segment.fileSize <= segment.memorySize else {
                throw .badSegment(index: index, "p_filesz \(segment.fileSize) exceeds p_memsz \(segment.memorySize)")
            }
            guard reader.contains(segment.offset, segment.fileSize) else {
                throw .badSegment(index: index, "file bytes [\(segment.offset), +\(segment.fileSize)) lie outside the \(reader.bytes.count)-byte file")
            }
            let (end, overflow) = segment.virtualAddress.addingReportingOverflow(segment.memorySize)
            guard !overflow else {
                throw .segmentOutsideGuestMemory(index: index, start: segment.virtualAddress, end: .max)
            }
            if segment.memorySize > 0 { ranges.append((index, segment.virtualAddress, end)) }
        }
        guard !ranges.isEmpty else { throw .noLoadableSegments }
        let sorted = ranges.sorted { $0.start < $1.start }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.start < a.end {
            throw .overlappingSegments(min(a.index, b.index), max(a.index, b.index))
        }
        let inCode = segments.contains { segment in
            segment.type == ptLoad && segment.flags & 1 != 0 && entry >= segment.virtualAddress
                && entry - segment.virtualAddress < segment.memorySize
        }
        guard inCode || !requireEntry else { throw .entryOutsideCode(entry) }
    }

    /// The GNU build ID (NT_GNU_BUILD_ID in a PT_NOTE), when the file has one.
    var buildID: [UInt8]? {
        let reader = ByteReader(bytes: bytes)
        for note in segments where note.type == 4 /* PT_NOTE */ && reader.contains(note.offset, note.fileSize) {
            var at = note.offset
            let end = note.offset + note.fileSize
            while at + 12 <= end {
                guard let nameSize = try? reader.integer(UInt32.self, at: at, "n_namesz"),
                      let descriptionSize = try? reader.integer(UInt32.self, at: at + 4, "n_descsz"),
                      let type = try? reader.integer(UInt32.self, at: at + 8, "n_type") else { return nil }
                let name = at + 12, description = name + (UInt64(nameSize) + 3) & ~3
                let next = description + (UInt64(descriptionSize) + 3) & ~3
                guard next <= end else { break }
                if type == 3, nameSize == 4, bytes[Int(name)..<Int(name) + 4] == [0x47, 0x4e, 0x55, 0], (1...64).contains(descriptionSize) {
                    return Array(bytes[Int(description)..<Int(description) + Int(descriptionSize)])
                }
                at = next
            }
        }
        return nil
    }

    /// Maps a (unrelocated) virtual address to its file offset through the PT_LOAD segments.
    func fileOffset(ofVirtualAddress address: UInt64, count: UInt64) -> UInt64? {
        for segment in loadSegments where address >= segment.virtualAddress {
            let delta = address - segment.virtualAddress
            let (end, overflow) = delta.addingReportingOverflow(count)
            if !overflow, end <= segment.fileSize { return segment.offset + delta }
        }
        return nil
    }
}

