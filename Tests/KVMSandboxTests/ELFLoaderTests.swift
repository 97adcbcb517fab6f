@testable import KVMSandbox
import KVMSandboxTools
import Testing

/// Helpers to patch little-endian fields of a valid ELF.
extension Array where Element == UInt8 {
    func patching<T: FixedWidthInteger>(_ value: T, at offset: Int) -> [UInt8] {
        var copy = self
        for index in 0..<MemoryLayout<T>.size { copy[offset + index] = UInt8(truncatingIfNeeded: value >> (index * 8)) }
        return copy
    }
    func integer<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        (0..<MemoryLayout<T>.size).reduce(T.zero) { $0 | T(self[offset + $1]) << ($1 * 8) }
    }
}

extension KVMTests {
    /// Crafted and malformed ELF files: each is refused with the matching error, never loaded.
    @Suite struct Loader {
        func elfError(_ bytes: [UInt8]) -> ELFError? {
            do { _ = try ELFFile(bytes: bytes); return nil } catch { return error }
        }

        /// Offsets of the first PT_LOAD with the execute flag, and of the first writable one.
        func loadHeaders(_ bytes: [UInt8]) -> (code: Int, data: Int) {
            let phoff = Int(bytes.integer(UInt64.self, at: 32))
            let count = Int(bytes.integer(UInt16.self, at: 56))
            let headers = (0..<count).map { phoff + $0 * 56 }.filter { bytes.integer(UInt32.self, at: $0) == 1 }
            let code = headers.first { bytes.integer(UInt32.self, at: $0 + 4) & 1 != 0 }!
            let data = headers.first { bytes.integer(UInt32.self, at: $0 + 4) & 2 != 0 }!
            return (code, data)
        }

        @Test func malformedHeadersAreRefused() throws {
            let good = try Guests.bytes("args")
            #expect(elfError(good) == nil)
            #expect(elfError([]) == .notELF)
            #expect(elfError(Array("#!/bin/sh\n".utf8)) == .notELF)
            #expect(elfError(Array(good[0..<40])) == .truncated(what: "the ELF header"))
            #expect(elfError(good.patching(UInt8(1), at: 4)) == .not64Bit)
            #expect(elfError(good.patching(UInt8(2), at: 5)) == .notLittleEndian)
            #expect(elfError(good.patching(UInt16(183), at: 18)) == .wrongMachine(183))
            #expect(elfError(good.patching(UInt16(1), at: 16)) == .notExecutable(type: 1))
            #expect(elfError(good.patching(UInt16(0), at: 56)) == .badProgramHeaderTable("e_phnum is 0"))
            #expect(elfError(good.patching(UInt16(32), at: 54)) == .badProgramHeaderTable("e_phentsize is 32, expected 56"))
            #expect(elfError(good.patching(UInt64.max - 8, at: 32)) == .truncated(what: "the program-header table"))
            #expect(elfError(Array(good[0..<100])) == .truncated(what: "the program-header table"))
        }

        @Test func badSegmentsAreRefused() throws {
            let good = try Guests.bytes("args")
            let (code, data) = loadHeaders(good)
            // File bytes past the end of the file.
            if case .badSegment = elfError(good.patching(UInt64(good.count), at: code + 8)) {} else { Issue.record("offset past end") }
            // p_filesz larger than p_memsz.
            if case .badSegment = elfError(good.patching(UInt64.max / 2, at: data + 32)) {} else { Issue.record("filesz > memsz") }
            // The data segment moved onto the code segment.
            let codeAddress = good.integer(UInt64.self, at: code + 16)
            if case .overlappingSegments = elfError(good.patching(codeAddress, at: data + 16)) {} else { Issue.record("overlap") }
            // Entry point in data, not code.
            let dataAddress = good.integer(UInt64.self, at: data + 16)
            #expect(elfError(good.patching(dataAddress, at: 24)) == .entryOutsideCode(dataAddress))
            // An address range that wraps around.
            if case .segmentOutsideGuestMemory = elfError(good.patching(UInt64.max - 0x10, at: data + 16)) {} else { Issue.record("wrap") }
        }

        @Test func segmentsOutsideTheGuestAddressRangeAreRefused() throws {
            let good = try Guests.bytes("args")
            let (_, data) = loadHeaders(good)
            for address in [UInt64(0), 0x7fff_0000_0000, 0xffff_8000_0000_0000] {
                let bytes = good.patching(address, at: data + 16)
                #expect {
                    try Sandbox(elf: try ELFFile(bytes: bytes))
                } throws: { error in
                    if case SandboxError.invalidELF(.segmentOutsideGuestMemory) = error { return true }
                    return false
                }
            }
        }

        @Test func hugeSegmentIsRefusedWithoutAllocating() throws {
            let good = try Guests.bytes("args")
            let (_, data) = loadHeaders(good)
            let bytes = good.patching(UInt64(1) << 40, at: data + 40)  // p_memsz 1 TiB
            #expect {
                try Sandbox(elf: try ELFFile(bytes: bytes))
            } throws: { error in
                if case SandboxError.outOfGuestMemory = error { return true }
                return false
            }
        }

        @Test func dynamicProgramNamesItsInterpreter() throws {
            let output = Guests.outputDirectory.appendingPathComponent("dynamic.elf").path
            let source = Guests.testsDirectory.deletingLastPathComponent().appendingPathComponent("Guests/pie.c").path
            #expect(GuestToolchain.spawn(["gcc", "-O2", "-o", output, source]) == 0)
            var bytes = try readBytes(output)
            let elf = try ELFFile(bytes: bytes)
            #expect(elf.isDynamic)
            #expect(elf.interpreter?.contains("ld-linux") == true)
            // A PT_INTERP that is not an absolute path is refused with a reason.
            let interp = try #require(elf.segments.first { $0.type == 3 })
            bytes[Int(interp.offset)] = UInt8(ascii: "x")
            guard case .badInterpreter = elfError(bytes) else {
                Issue.record("expected badInterpreter, got \(String(describing: elfError(bytes)))")
                return
            }
        }

        @Test func symbolsAreKept() throws {
            let elf = try ELFFile(bytes: try Guests.bytes("args"))
            let main = try #require(elf.symbols.symbol(named: "main"))
            #expect(main.isFunction)
            #expect(elf.symbols.function(containing: main.address + 1)?.symbol.name == "main")
            #expect(elf.symbols.function(containing: main.address + 1)?.offset == 1)
        }
    }
}
