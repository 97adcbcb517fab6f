
/// Entry points for the libFuzzer targets in `Fuzz/` (SPI: `@_spi(Fuzzing) import KVMSandbox`).
/// Each takes one input and drives the code that parses guest-controlled data; none may trap.
/// Not public API: the fuzz package is the only client.
@_spi(Fuzzing) public enum FuzzEntryPoints {
    /// Guest memory the ELF target loads into, input after input (one thread: libFuzzer's).
    nonisolated(unsafe) static let reusableMemory = try? GuestMemory(size: 16 << 20)

    /// (a) ELF parse + load into 16 MiB of guest memory + symbolize; a library's parse (no entry
    /// required) with its build ID; the same file loaded as a dynamic loader would be.
    public static func elf(_ bytes: [UInt8]) {
        if let library = try? ELFFile(bytes: bytes, requireEntry: false) {
            _ = library.buildID.map(debugFilePath)
        }
        guard let elf = try? ELFFile(bytes: bytes) else { return }
        _ = elf.symbols.function(named: "main")
        _ = elf.symbols.symbol(named: "_start")
        if let memory = reusableMemory, let space = try? AddressSpace(memory: memory) {
            _ = try? ELFLoader.load(elf, into: space, at: .below(GuestLayout.imageLimit))
            memory.zero(at: 0, count: Int(space.allocatorState.next))
        }
        // One 16 MiB guest memory for the whole run (a memfd and mapping per input would cost
        // more than the parse and load), zeroed back to fresh after each input.
        guard let memory = reusableMemory, let space = try? AddressSpace(memory: memory) else { return }
        defer { memory.zero(at: 0, count: Int(space.allocatorState.next)) }
        guard let program = try? ELFLoader.load(elf, into: space) else { return }
        let view = GuestMemoryView(space: space)
        for address in [program.entry, program.imageRange.lowerBound, program.imageRange.upperBound &- 1,
                        program.programHeaderAddress, program.base] {
            _ = program.symbolize(address)
            _ = try? view.read(address, count: 64)
        }
        for symbol in elf.symbols.symbols.prefix(64) { _ = program.symbolize(program.base &+ symbol.address &+ 1) }
    }

    /// (b) The unwinder and DWARF lookups: the input is 64 bytes of registers, then an ELF image
    /// (usually a corrupted one with `.eh_frame` and `.debug_*`). The guest "memory" the walk
    /// reads is the input itself, mapped at the stack pointer's page.
    public static func unwind(_ data: [UInt8]) {
        guard data.count > 64 else { return }
        let words = (0..<8).map { UInt64(littleEndianBytes: data[$0 * 8..<$0 * 8 + 8]) }
        let image = Array(data[64...])
        let symbols = (try? ELFFile(bytes: image))?.symbols ?? SymbolTable()
        let program = LoadedProgram(base: words[7] & 0xffff_f000, entry: words[0], programHeaderAddress: 0, programHeaderCount: 0,
                                    imageEnd: 0x80_0000, symbols: symbols, imageRange: 0x1000..<0x80_0000,
                                    debugInfo: LazyDebugInfo(elfBytes: image))
        let stackBase: UInt64 = 0x7ffe_0000_0000
        let memory = data
        let unwinder = Unwinder(modules: [CodeModule(program, name: nil)]) { address in
            guard address >= stackBase, address - stackBase <= UInt64(memory.count - 8) else { return nil }
            let offset = Int(address - stackBase)
            return UInt64(littleEndianBytes: memory[offset..<offset + 8])
        }
        // The return-address column, the stack and frame pointers, then three callee-saved registers.
        var state = [DwarfRegister.returnAddress: words[0],
                     DwarfRegister.stackPointer: stackBase &+ words[1] % UInt64(data.count),
                     DwarfRegister.framePointer: words[2] % 3 == 0 ? stackBase &+ words[2] % UInt64(data.count) : words[2]]
        let others = DwarfRegister.tracked.filter { ![DwarfRegister.returnAddress, DwarfRegister.framePointer].contains($0) }
        for (column, word) in zip(others, words[3...5]) { state[column] = word }
        let registers = DwarfRegister.registers(from: state)
        _ = unwinder.backtrace(from: registers)
    }

    /// (e) A snapshot file's parse and validation (without the checksum, so that mutations reach
    /// the header decoder and the checks behind it).
    public static func snapshotFile(_ bytes: [UInt8]) {
        _ = try? Snapshot.parse(bytes, verifyingChecksum: false)
    }
}
