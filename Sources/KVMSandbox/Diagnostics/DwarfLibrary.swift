#if canImport(Glibc)
import Glibc
#endif

/// elfutils' libdw and libelf, loaded at run time with `dlopen` so that they stay optional:
/// without them a backtrace still has addresses, symbols and frame-pointer unwinding, and says
/// why it has no file:line.
///
/// Only the dozen functions the symbolizer and the CFI unwinder need are bound. All of them are
/// documented in elfutils' `libdw.h`/`libelf.h` (0.170 and later).
///
/// (@unchecked: immutable C function pointers from `dlsym`; the state they act on is `DebugInfo`'s, which serializes its calls.)
struct DwarfLibrary: @unchecked Sendable {
    typealias ElfVersion = @convention(c) (UInt32) -> UInt32
    typealias ElfMemory = @convention(c) (UnsafeMutablePointer<CChar>?, Int) -> OpaquePointer?
    typealias ElfEnd = @convention(c) (OpaquePointer?) -> Int32
    typealias DwarfBeginElf = @convention(c) (OpaquePointer?, Int32, OpaquePointer?) -> OpaquePointer?
    typealias DwarfEnd = @convention(c) (OpaquePointer?) -> Int32
    typealias DwarfAddrDie = @convention(c) (OpaquePointer?, UInt64, UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer?
    typealias DwarfGetSrcDie = @convention(c) (UnsafeMutableRawPointer?, UInt64) -> OpaquePointer?
    typealias DwarfLineSrc = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt64>?, UnsafeMutablePointer<UInt64>?) -> UnsafePointer<CChar>?
    typealias DwarfLineNo = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>?) -> Int32
    typealias DwarfGetCFIElf = @convention(c) (OpaquePointer?) -> OpaquePointer?
    typealias DwarfCFIEnd = @convention(c) (OpaquePointer?) -> Int32
    typealias DwarfCFIAddrFrame = @convention(c) (OpaquePointer?, UInt64, UnsafeMutablePointer<OpaquePointer?>?) -> Int32
    typealias DwarfFrameInfo = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt64>?, UnsafeMutablePointer<UInt64>?, UnsafeMutablePointer<Bool>?) -> Int32
    typealias DwarfFrameCFA = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<Int>?) -> Int32
    typealias DwarfFrameRegister = @convention(c) (OpaquePointer?, Int32, UnsafeMutableRawPointer?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<Int>?) -> Int32

    let elfMemory: ElfMemory
    let elfEnd: ElfEnd
    let dwarfBeginElf: DwarfBeginElf
    let dwarfEnd: DwarfEnd
    let dwarfAddrDie: DwarfAddrDie
    let dwarfGetSrcDie: DwarfGetSrcDie
    let dwarfLineSrc: DwarfLineSrc
    let dwarfLineNo: DwarfLineNo
    let dwarfGetCFIElf: DwarfGetCFIElf
    let dwarfCFIEnd: DwarfCFIEnd
    let dwarfCFIAddrFrame: DwarfCFIAddrFrame
    let dwarfFrameInfo: DwarfFrameInfo
    let dwarfFrameCFA: DwarfFrameCFA
    let dwarfFrameRegister: DwarfFrameRegister

    /// `sizeof(Dwarf_Op)`: `{ uint8_t atom; Dwarf_Word number, number2, offset; }`.
    static let operationSize = 32
    /// Room for a `Dwarf_Die` (four pointer-sized words in every elfutils release).
    static let dieSize = 64

    /// The library, or why it could not be loaded (checked once per process).
    static let shared: Result<DwarfLibrary, DwarfUnavailable> = load()

    private static func load() -> Result<DwarfLibrary, DwarfUnavailable> {
        guard let elf = dlopen("libelf.so.1", RTLD_NOW | RTLD_LOCAL) else {
            return .failure(DwarfUnavailable(reason: "libelf.so.1 not found (apt-get install libdw1)"))
        }
        guard let dw = dlopen("libdw.so.1", RTLD_NOW | RTLD_LOCAL) else {
            return .failure(DwarfUnavailable(reason: "libdw.so.1 not found (apt-get install libdw1)"))
        }
        var missing: [String] = []
        func bind<T>(_ handle: UnsafeMutableRawPointer, _ name: String, as: T.Type) -> T? {
            guard let symbol = dlsym(handle, name) else { missing.append(name); return nil }
            return unsafeBitCast(symbol, to: T.self)
        }
        let version = bind(elf, "elf_version", as: ElfVersion.self)
        let library = DwarfLibrary.init(
            elfMemory: bind(elf, "elf_memory", as: ElfMemory.self),
            elfEnd: bind(elf, "elf_end", as: ElfEnd.self),
            dwarfBeginElf: bind(dw, "dwarf_begin_elf", as: DwarfBeginElf.self),
            dwarfEnd: bind(dw, "dwarf_end", as: DwarfEnd.self),
            dwarfAddrDie: bind(dw, "dwarf_addrdie", as: DwarfAddrDie.self),
            dwarfGetSrcDie: bind(dw, "dwarf_getsrc_die", as: DwarfGetSrcDie.self),
            dwarfLineSrc: bind(dw, "dwarf_linesrc", as: DwarfLineSrc.self),
            dwarfLineNo: bind(dw, "dwarf_lineno", as: DwarfLineNo.self),
            dwarfGetCFIElf: bind(dw, "dwarf_getcfi_elf", as: DwarfGetCFIElf.self),
            dwarfCFIEnd: bind(dw, "dwarf_cfi_end", as: DwarfCFIEnd.self),
            dwarfCFIAddrFrame: bind(dw, "dwarf_cfi_addrframe", as: DwarfCFIAddrFrame.self),
            dwarfFrameInfo: bind(dw, "dwarf_frame_info", as: DwarfFrameInfo.self),
            dwarfFrameCFA: bind(dw, "dwarf_frame_cfa", as: DwarfFrameCFA.self),
            dwarfFrameRegister: bind(dw, "dwarf_frame_register", as: DwarfFrameRegister.self))
        guard let library, let version, missing.isEmpty else {
            return .failure(DwarfUnavailable(reason: "libdw.so.1 lacks \(missing.joined(separator: ", "))"))
        }
        _ = version(1)  // EV_CURRENT: libelf refuses to work before this call.
        return .success(library)
    }

    private init?(elfMemory: ElfMemory?, elfEnd: ElfEnd?, dwarfBeginElf: DwarfBeginElf?, dwarfEnd: DwarfEnd?,
                  dwarfAddrDie: DwarfAddrDie?, dwarfGetSrcDie: DwarfGetSrcDie?, dwarfLineSrc: DwarfLineSrc?,
                  dwarfLineNo: DwarfLineNo?, dwarfGetCFIElf: DwarfGetCFIElf?, dwarfCFIEnd: DwarfCFIEnd?,
                  dwarfCFIAddrFrame: DwarfCFIAddrFrame?, dwarfFrameInfo: DwarfFrameInfo?,
                  dwarfFrameCFA: DwarfFrameCFA?, dwarfFrameRegister: DwarfFrameRegister?) {
        guard let elfMemory, let elfEnd, let dwarfBeginElf, let dwarfEnd, let dwarfAddrDie, let dwarfGetSrcDie,
              let dwarfLineSrc, let dwarfLineNo, let dwarfGetCFIElf, let dwarfCFIEnd, let dwarfCFIAddrFrame,
              let dwarfFrameInfo, let dwarfFrameCFA, let dwarfFrameRegister else { return nil }
        (self.elfMemory, self.elfEnd, self.dwarfBeginElf, self.dwarfEnd) = (elfMemory, elfEnd, dwarfBeginElf, dwarfEnd)
        (self.dwarfAddrDie, self.dwarfGetSrcDie, self.dwarfLineSrc, self.dwarfLineNo) = (dwarfAddrDie, dwarfGetSrcDie, dwarfLineSrc, dwarfLineNo)
        (self.dwarfGetCFIElf, self.dwarfCFIEnd, self.dwarfCFIAddrFrame) = (dwarfGetCFIElf, dwarfCFIEnd, dwarfCFIAddrFrame)
        (self.dwarfFrameInfo, self.dwarfFrameCFA, self.dwarfFrameRegister) = (dwarfFrameInfo, dwarfFrameCFA, dwarfFrameRegister)
    }
}

/// Why libdw could not be used.
struct DwarfUnavailable: Error, Sendable {
    let reason: String
}
