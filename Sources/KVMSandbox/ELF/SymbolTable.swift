/// A function or object symbol from the ELF symbol table.
public struct Symbol: Sendable, Equatable {
    /// The symbol's name.
    public let name: String
    /// Its address as linked (add the load base for static-PIE).
    public let address: UInt64
    /// Its size in bytes (0 when unknown).
    public let size: UInt64
    /// Whether it is a function (STT_FUNC).
    public let isFunction: Bool
}

/// The ELF's `.symtab` (or `.dynsym` when stripped), kept for fault reports and guest-function calls. Empty when the file is
/// stripped or the table is malformed: symbols are a convenience, never a reason to refuse a program.
public struct SymbolTable: Sendable {
    /// Symbols sorted by address.
    public let symbols: [Symbol]

    /// Function symbols by name (the first one wins when a name repeats).
    let functionsByName: [String: Symbol]

    /// No symbols.
    public init() { self.init(symbols: []) }

    init(symbols: [Symbol]) {
        self.symbols = symbols
        functionsByName = Dictionary(symbols.filter(\.isFunction).map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// The function symbol called `name`.
    public func function(named name: String) -> Symbol? { functionsByName[name] }

    init(elf reader: ByteReader) {
        self.init(symbols: (try? Self.parse(reader)) ?? [])
    }

    /// At most this many symbols are kept (a hostile file cannot make the host allocate more).
    static let limit = 1 << 20
    /// At most this many bytes of symbol names in all: symbols may share (or overlap in) one
    /// long string, so the names' total is not bounded by the file size. Past it, the rest of
    /// the table is ignored.
    static let nameBudget = 32 << 20

    private static func parse(_ reader: ByteReader) throws(ELFError) -> [Symbol] {
        let shoff = try reader.integer(UInt64.self, at: 40, "e_shoff")
        let shentsize = try reader.integer(UInt16.self, at: 58, "e_shentsize")
        let shnum = try reader.integer(UInt16.self, at: 60, "e_shnum")
        guard shoff != 0, shentsize == 64, reader.contains(shoff, UInt64(shnum) * 64) else { return [] }
        func header(_ index: UInt64) throws(ELFError) -> (type: UInt32, offset: UInt64, size: UInt64, link: UInt32, entsize: UInt64) {
            let at = shoff + index * 64
            return (try reader.integer(UInt32.self, at: at + 4, "sh_type"),
                    try reader.integer(UInt64.self, at: at + 24, "sh_offset"),
                    try reader.integer(UInt64.self, at: at + 32, "sh_size"),
                    try reader.integer(UInt32.self, at: at + 40, "sh_link"),
                    try reader.integer(UInt64.self, at: at + 56, "sh_entsize"))
        }
        // .symtab; a stripped library still has .dynsym, with its exported functions.
        var tables: [UInt64] = []
        for index in 0..<UInt64(shnum) where try header(index).type == 2 { tables.append(index) }
        if tables.isEmpty { for index in 0..<UInt64(shnum) where try header(index).type == 11 { tables.append(index) } }
        for index in tables {
            let section = try header(index)
            guard section.entsize == 24, UInt64(section.link) < UInt64(shnum),
                  reader.contains(section.offset, section.size) else { continue }
            let strings = try header(UInt64(section.link))
            guard reader.contains(strings.offset, strings.size) else { return [] }
            var symbols: [Symbol] = []
            var nameBytes = 0
            let count = min(section.size / 24, UInt64(limit))
            for entry in 0..<count {
                let at = section.offset + entry * 24
                let info = try reader.integer(UInt8.self, at: at + 4, "st_info")
                let kind = info & 0xf
                guard kind == 1 || kind == 2 else { continue }  // STT_OBJECT, STT_FUNC
                let nameOffset = UInt64(try reader.integer(UInt32.self, at: at, "st_name"))
                let value = try reader.integer(UInt64.self, at: at + 8, "st_value")
                let size = try reader.integer(UInt64.self, at: at + 16, "st_size")
                guard value != 0, nameOffset < strings.size,
                      let name = reader.cString(at: strings.offset + nameOffset, limit: 1024) else { continue }
                nameBytes += name.utf8.count
                guard nameBytes <= nameBudget else { break }
                symbols.append(Symbol(name: name, address: value, size: size, isFunction: kind == 2))
            }
            return symbols.sorted { $0.address < $1.address }
        }
        return []
    }

    /// The function containing `address` (linked address), with the offset into it.
    public func function(containing address: UInt64) -> (symbol: Symbol, offset: UInt64)? {
        // Binary search for the last symbol at or below the address.
        var low = 0, high = symbols.count
        while low < high {
            let middle = (low + high) / 2
            if symbols[middle].address <= address { low = middle + 1 } else { high = middle }
        }
        var index = low - 1
        while index >= 0 {
            let symbol = symbols[index]
            if symbol.isFunction {
                let offset = address - symbol.address
                return symbol.size == 0 || offset < symbol.size ? (symbol, offset) : nil
            }
            index -= 1
        }
        return nil
    }

    /// The symbol named `name`, if any.
    public func symbol(named name: String) -> Symbol? { symbols.first { $0.name == name } }
}

/// An ELF file's symbol table, parsed on first use (by whichever thread asks first) and kept:
/// shared by the file and every program loaded from it.
final class LazySymbolTable: Sendable {
    private let reader: ByteReader?
    private let parsed: HostMutex<SymbolTable?>

    /// The table of the file `reader` reads, parsed when first asked for.
    init(_ reader: ByteReader) {
        self.reader = reader
        parsed = HostMutex(nil)
    }

    /// A table parsed already.
    init(parsed table: SymbolTable) {
        reader = nil
        parsed = HostMutex(table)
    }

    var table: SymbolTable {
        parsed.withLock { table in
            if let table { return table }
            let made = reader.map { SymbolTable(elf: $0) } ?? SymbolTable()
            table = made
            return made
        }
    }
}
