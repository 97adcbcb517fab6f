/// Why an ELF file cannot be run as a guest. Each case says what to do about it.
public enum ELFError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Shorter than the structure being read.
    case truncated(what: String)
    /// No `\x7fELF` magic.
    case notELF
    /// ELFCLASS32 or an unknown class.
    case not64Bit
    /// Big-endian or an unknown data encoding.
    case notLittleEndian
    /// `e_machine` is not EM_X86_64.
    case wrongMachine(UInt16)
    /// Neither ET_EXEC nor ET_DYN (e.g. an object file or a core dump).
    case notExecutable(type: UInt16)
    /// PT_INTERP is malformed (not a NUL-terminated absolute path inside the file, or more than one).
    case badInterpreter(String)
    /// `e_phentsize`/`e_phnum`/`e_phoff` do not describe a program-header table inside the file.
    case badProgramHeaderTable(String)
    /// No PT_LOAD segment.
    case noLoadableSegments
    /// A segment's file bytes lie outside the file, or it has more file bytes than memory bytes.
    case badSegment(index: Int, String)
    /// Two segments claim the same bytes.
    case overlappingSegments(Int, Int)
    /// A segment lies outside the guest's usable address range.
    case segmentOutsideGuestMemory(index: Int, start: UInt64, end: UInt64)
    /// The entry point is not inside an executable segment.
    case entryOutsideCode(UInt64)
    /// The static-PIE's dynamic section or relocations are malformed or unsupported.
    case badRelocations(String)

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String {
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        switch self {
        case .truncated(let what): return "file is truncated (\(what) extends past its end)"
        case .notELF: return "not an ELF file (bad magic)"
        case .not64Bit: return "not a 64-bit ELF file (only ELF64 x86-64 is supported)"
        case .notLittleEndian: return "not a little-endian ELF file"
        case .wrongMachine(let machine):
            let names: [UInt16: String] = [3: "i386", 40: "ARM", 183: "AArch64", 243: "RISC-V"]
            return "not an x86-64 program (e_machine \(machine)\(names[machine].map { ", \($0)" } ?? ""))"
        case .notExecutable(let type): return "not an executable (e_type \(type)); link a program, not an object file"
        case .badInterpreter(let reason): return "bad PT_INTERP: \(reason)"
        case .badProgramHeaderTable(let reason): return "bad program-header table: \(reason)"
        case .noLoadableSegments: return "no PT_LOAD segment"
        case .badSegment(let index, let reason): return "segment \(index): \(reason)"
        case .overlappingSegments(let a, let b): return "segments \(a) and \(b) overlap"
        case .segmentOutsideGuestMemory(let index, let start, let end):
            return "segment \(index) [\(hex(start)), \(hex(end))) is outside the guest's address range [\(hex(GuestLayout.lowestSegmentAddress)), \(hex(GuestLayout.imageLimit)))"
        case .entryOutsideCode(let entry): return "entry point \(hex(entry)) is not inside an executable segment"
        case .badRelocations(let reason): return "relocations: \(reason)"
        }
    }
}

/// Bounds-checked little-endian reads from a byte array: every read past the end throws.
struct ByteReader {
    let bytes: [UInt8]

    func integer<T: FixedWidthInteger>(_ type: T.Type, at offset: UInt64, _ what: @autoclosure () -> String) throws(ELFError) -> T {
        let size = UInt64(MemoryLayout<T>.size)
        guard contains(offset, size) else { throw .truncated(what: what()) }
        return T(littleEndianBytes: bytes[Int(offset)..<Int(offset + size)])
    }

    /// Whether `[offset, offset + count)` is inside the bytes (overflow-safe).
    func contains(_ offset: UInt64, _ count: UInt64) -> Bool {
        let (end, overflow) = offset.addingReportingOverflow(count)
        return !overflow && end <= UInt64(bytes.count)
    }

    func slice(_ offset: UInt64, _ count: UInt64, _ what: @autoclosure () -> String) throws(ELFError) -> ArraySlice<UInt8> {
        guard contains(offset, count) else { throw .truncated(what: what()) }
        return bytes[Int(offset)..<Int(offset + count)]
    }

    /// A NUL-terminated string at `offset`, at most `limit` bytes, or nil when malformed.
    func cString(at offset: UInt64, limit: Int = 4096) -> String? {
        guard offset < UInt64(bytes.count) else { return nil }
        let start = Int(offset)
        let end = min(bytes.count, start + limit)
        guard let nul = bytes[start..<end].firstIndex(of: 0) else { return nil }
        return String(decoding: bytes[start..<nul], as: UTF8.self)
    }
}
