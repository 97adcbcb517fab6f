#if canImport(Glibc)
import Glibc
#endif

/// A piece of guest code a backtrace can name: the program, its dynamic loader, or a library
/// the loader mapped. Addresses in `range` are symbolized as `base` + the ELF's linked addresses.
struct CodeModule {
    /// Shown after a frame ("libc.so.6"); nil for the program itself.
    let name: String?
    /// The guest addresses the module occupies.
    let range: Range<UInt64>
    /// Its load base.
    let base: UInt64
    let symbols: SymbolTable
    /// Call-frame information and line tables, opened on first use.
    let debugInfo: LazyDebugInfo
    /// Line tables from a separate debug file (`/usr/lib/debug/.build-id/...`), when there is one.
    var separateDebugInfo: LazyDebugInfo?

    /// Line tables: the separate debug file's, else the module's own.
    var lineInfo: LazyDebugInfo { separateDebugInfo ?? debugInfo }

    /// The program (or loader) as loaded by the host.
    init(_ program: LoadedProgram, name: String?) {
        self.name = name
        range = program.imageRange
        base = program.base
        symbols = program.symbols
        debugInfo = program.debugInfo
    }

    init(name: String?, range: Range<UInt64>, base: UInt64, symbols: SymbolTable, debugInfo: LazyDebugInfo) {
        (self.name, self.range, self.base, self.symbols, self.debugInfo) = (name, range, base, symbols, debugInfo)
    }

    /// Libraries from the guest's file mappings (what ld.so mapped): for each file with an
    /// executable mapping, its ELF read through the guest's view of the files, its base found
    /// from the segment whose file offset the mapping starts at. Files that cannot be read or
    /// parsed are left out (a backtrace then shows bare addresses there).
    static func libraries(from mappings: [FileMapping], fileSystem: FileSystemView) -> [CodeModule] {
        var modules: [CodeModule] = []
        var seen: Set<String> = []
        for mapping in mappings where mapping.executable && !seen.contains(mapping.path) {
            seen.insert(mapping.path)
            let all = mappings.filter { $0.path == mapping.path }
            guard case .success(let fd) = fileSystem.open(mapping.path, flags: O_RDONLY, mode: 0) else { continue }
            let bytes = try? readFile(descriptor: fd, limit: maximumELFFileSize)
            close(fd)
            guard let bytes, let elf = try? ELFFile(bytes: bytes, requireEntry: false) else { continue }
            guard let segment = elf.loadSegments.first(where: { PageSize.alignDown($0.offset) == mapping.offset }),
                  mapping.start >= PageSize.alignDown(segment.virtualAddress) else { continue }
            let base = mapping.start - PageSize.alignDown(segment.virtualAddress)
            let low = all.map(\.start).min() ?? mapping.start, high = all.map(\.end).max() ?? mapping.end
            let name = FileSystemView.lastComponent(of: mapping.path)
            var module = CodeModule(name: name, range: low..<high, base: base,
                                    symbols: elf.symbols, debugInfo: LazyDebugInfo(elfBytes: bytes))
            // A distribution's separate debug file (libc6-dbg), found by build ID on the host:
            // full symbols (libc's internal functions) and line tables.
            // (Its segments have no file bytes, so it is read for its sections only.)
            if let id = elf.buildID, let debugBytes = try? readFile(debugFilePath(buildID: id), limit: maximumELFFileSize) {
                let debugSymbols = SymbolTable(elf: ByteReader(bytes: debugBytes))
                if debugSymbols.symbols.count > elf.symbols.symbols.count {
                    module = CodeModule(name: name, range: low..<high, base: base, symbols: debugSymbols, debugInfo: module.debugInfo)
                }
                module.separateDebugInfo = LazyDebugInfo(elfBytes: debugBytes)
            }
            modules.append(module)
        }
        return modules
    }
}

/// Where distributions install the separate debug file of the ELF with this build ID (the
/// path is made of hex digits only, so a file's build ID cannot name anything else).
func debugFilePath(buildID: [UInt8]) -> String {
    let hex = buildID.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
    return "/usr/lib/debug/.build-id/\(hex.first ?? "")/\(hex.dropFirst().joined()).debug"
}

extension CodeModule {
    /// `function+0xoffset (module)` for an address in this module, or `module+0xoffset`.
    func symbolize(_ address: UInt64) -> String? {
        let suffix = name.map { " (\($0))" } ?? ""
        if let (symbol, offset) = symbols.function(containing: address &- base) {
            return (offset == 0 ? symbol.name : "\(symbol.name)+0x\(String(offset, radix: 16))") + suffix
        }
        return name.map { "\($0)+0x\(String(address &- base, radix: 16))" }
    }
}

extension Array where Element == CodeModule {
    /// The module whose range holds `address`.
    func containing(_ address: UInt64) -> CodeModule? { first { $0.range.contains(address) } }
}
