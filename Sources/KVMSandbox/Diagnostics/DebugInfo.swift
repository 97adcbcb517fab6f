#if canImport(Glibc)
import Glibc
#endif

/// A source position from DWARF line tables.
public struct SourceLocation: Sendable, Equatable, Codable, CustomStringConvertible {
    /// The file as the line table names it (usually the path the compiler was given).
    public let file: String
    /// The 1-based line.
    public let line: Int

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String { "\(file):\(line)" }
}

/// How to find a caller's registers from a callee's, at one code address (one row of a DWARF
/// call-frame table, `.eh_frame` or `.debug_frame`).
struct CallFrameRule: Equatable {
    /// Where a register of the caller is.
    enum Location: Equatable {
        /// Not recoverable.
        case undefined
        /// Unchanged by the callee.
        case sameValue
        /// Saved in memory at CFA + offset.
        case savedAtCFA(Int64)
        /// Its value is CFA + offset.
        case valueIsCFA(Int64)
        /// Its value is in another register (DWARF number).
        case inRegister(Int)
    }

    /// CFA = value of DWARF register `cfaRegister` + `cfaOffset`.
    let cfaRegister: Int
    let cfaOffset: Int64
    /// The DWARF column that holds the return address (`DwarfRegister.returnAddress`).
    let returnAddressColumn: Int
    /// Rules for the DWARF registers the unwinder tracks.
    let registers: [Int: Location]
}

/// The debugging information of one guest ELF through libdw: file:line from DWARF line tables
/// and call-frame rules from `.eh_frame`/`.debug_frame`. Addresses are link-time addresses.
///
/// Owns a private copy of the ELF image and the libelf/libdw handles over it; all released in
/// deinit. Lookups are serialized, so one instance can serve every VM forked from a program.
///
/// (@unchecked: the libelf/libdw handles and the image are touched only under its lock; the rest is immutable.)
final class DebugInfo: @unchecked Sendable {
    /// Why there is no line information, when there is none (no libdw, or no `-g`).
    let lineInfoUnavailable: String?
    /// Why there are no call-frame tables, when there are none.
    let callFramesUnavailable: String?

    private let library: DwarfLibrary?
    private let image: UnsafeMutablePointer<CChar>?
    private let elf: OpaquePointer?
    private let dwarf: OpaquePointer?
    private let cfi: OpaquePointer?
    private let lock = HostMutex(false)  // (guards the libdw calls, not this value)

    /// The DWARF registers CFI rules are evaluated for (`DwarfRegister.tracked`).
    static var trackedRegisters: [Int] { DwarfRegister.tracked }

    init(elfBytes: [UInt8]) {
        switch DwarfLibrary.shared {
        case .failure(let error):
            (library, image, elf, dwarf, cfi) = (nil, nil, nil, nil, nil)
            lineInfoUnavailable = error.reason
            callFramesUnavailable = error.reason
        case .success(let library):
            self.library = library
            let image = UnsafeMutablePointer<CChar>.allocate(capacity: max(elfBytes.count, 1))
            elfBytes.withUnsafeBytes { UnsafeMutableRawPointer(image).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            self.image = image
            let elf = library.elfMemory(image, elfBytes.count)
            self.elf = elf
            dwarf = elf.flatMap { library.dwarfBeginElf($0, 0 /* DWARF_C_READ */, nil) }
            cfi = elf.flatMap { library.dwarfGetCFIElf($0) }
            lineInfoUnavailable = elf == nil ? "libelf could not read the ELF"
                : dwarf == nil ? "the ELF has no DWARF debug information (build with -g)" : nil
            callFramesUnavailable = cfi == nil ? "the ELF has no .eh_frame call-frame tables" : nil
        }
    }

    deinit {
        if let library {
            if let cfi { _ = library.dwarfCFIEnd(cfi) }
            if let dwarf { _ = library.dwarfEnd(dwarf) }
            if let elf { _ = library.elfEnd(elf) }
        }
        image?.deallocate()
    }

    /// The source file and line of the instruction at link-time address `address`.
    func sourceLocation(_ address: UInt64) -> SourceLocation? {
        guard let library, let dwarf else { return nil }
        return lock.withLock { _ in
            withUnsafeTemporaryAllocation(byteCount: DwarfLibrary.dieSize, alignment: 16) { die in
                guard let unit = library.dwarfAddrDie(dwarf, address, die.baseAddress),
                      let line = library.dwarfGetSrcDie(unit, address),
                      let file = library.dwarfLineSrc(line, nil, nil) else { return nil }
                var number: Int32 = 0
                guard library.dwarfLineNo(line, &number) == 0 else { return nil }
                return SourceLocation(file: String(cString: file), line: Int(number))
            }
        }
    }

    /// The call-frame rule that applies at link-time address `address`, when the tables cover it
    /// with rules this unwinder understands (register+offset CFA, saved-at-offset registers).
    func callFrameRule(at address: UInt64) -> CallFrameRule? {
        guard let library, let cfi else { return nil }
        return lock.withLock { _ -> CallFrameRule? in
            var frame: OpaquePointer?
            guard library.dwarfCFIAddrFrame(cfi, address, &frame) == 0, let frame else { return nil }
            defer { free(UnsafeMutableRawPointer(frame)) }
            let returnColumn = Int(library.dwarfFrameInfo(frame, nil, nil, nil))
            guard returnColumn >= 0 else { return nil }
            var ops: UnsafeMutableRawPointer?
            var count = 0
            guard library.dwarfFrameCFA(frame, &ops, &count) == 0, count == 1, let cfa = ops,
                  let (register, offset) = Self.registerPlusOffset(cfa) else { return nil }
            var registers: [Int: CallFrameRule.Location] = [:]
            let ok = withUnsafeTemporaryAllocation(byteCount: 3 * DwarfLibrary.operationSize, alignment: 16) { storage in
                for column in Self.trackedRegisters where column != DwarfRegister.returnAddress || returnColumn == DwarfRegister.returnAddress {
                    var ops: UnsafeMutableRawPointer?
                    var count = 0
                    guard library.dwarfFrameRegister(frame, Int32(column), storage.baseAddress, &ops, &count) == 0 else { return false }
                    guard let location = Self.location(ops, count) else { return false }
                    registers[column] = location
                }
                return true
            }
            guard ok else { return nil }
            return CallFrameRule(cfaRegister: register, cfaOffset: offset, returnAddressColumn: returnColumn, registers: registers)
        }
    }

    private static func operation(_ ops: UnsafeMutableRawPointer, _ index: Int) -> (atom: UInt8, number: UInt64, number2: UInt64) {
        let op = ops + index * DwarfLibrary.operationSize
        return (op.load(as: UInt8.self), op.load(fromByteOffset: 8, as: UInt64.self), op.load(fromByteOffset: 16, as: UInt64.self))
    }

    /// `DW_OP_bregx reg, offset` or `DW_OP_breg<n> offset`: how libdw states a register+offset rule.
    private static func registerPlusOffset(_ ops: UnsafeMutableRawPointer) -> (Int, Int64)? {
        let op = operation(ops, 0)
        switch op.atom {
        // Register numbers come from the ELF's tables: never trap on a huge one (unknown registers
        // simply have no value in the unwinder's state).
        case 0x92: return (Int(truncatingIfNeeded: op.number), Int64(bitPattern: op.number2))  // DW_OP_bregx
        case 0x70...0x8f: return (Int(op.atom - 0x70), Int64(bitPattern: op.number))  // DW_OP_breg0..31
        default: return nil
        }
    }

    /// Decodes the location expressions `dwarf_frame_register` produces for the common rules.
    private static func location(_ ops: UnsafeMutableRawPointer?, _ count: Int) -> CallFrameRule.Location? {
        guard let ops else { return .undefined }
        if count == 0 { return .sameValue }
        var atoms = (0..<count).map { operation(ops, $0) }
        let isValue = atoms.last?.atom == 0x9f  // DW_OP_stack_value
        if isValue { atoms.removeLast() }
        switch atoms.map(\.atom) {
        case [0x9c]:  // DW_OP_call_frame_cfa
            return isValue ? .valueIsCFA(0) : .savedAtCFA(0)
        case [0x9c, 0x23]:  // DW_OP_call_frame_cfa; DW_OP_plus_uconst n (wrapping: offsets are negative)
            let offset = Int64(bitPattern: atoms[1].number)
            return isValue ? .valueIsCFA(offset) : .savedAtCFA(offset)
        case [0x92] where isValue && atoms[0].number2 == 0:
            return .inRegister(Int(truncatingIfNeeded: atoms[0].number))
        default:
            return nil
        }
    }
}

/// A program's `DebugInfo`, opened the first time a fault needs it and then shared.
final class LazyDebugInfo: Sendable {
    private let state: HostMutex<(bytes: [UInt8], info: DebugInfo?)>

    init(elfBytes: [UInt8]) { state = HostMutex((elfBytes, nil)) }

    var value: DebugInfo {
        state.withLock { state in
            if let info = state.info { return info }
            let info = DebugInfo(elfBytes: state.bytes)
            state = ([], info)
            return info
        }
    }
}
