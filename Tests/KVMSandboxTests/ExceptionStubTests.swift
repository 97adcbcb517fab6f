@testable import KVMSandbox
import Testing

/// The hardware-KVM exception path's data, checked without KVM: gate encoding, stub bytes,
/// TSS stacks, layout. (It runs for real under the emulated SVM machine: Scripts/conformance.)
@Suite struct ExceptionStubTests {
    @Test func aGateEncodesHandlerSelectorISTAndType() {
        let gate = ExceptionStubs.gate(handler: 0x1122_3344_5566_7788, selector: 0x10, dpl: 3, ist: 1)
        #expect(gate == [0x88, 0x77, 0x10, 0x00, 0x01, 0xee, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0])
        #expect(ExceptionStubs.gate(handler: 0, selector: 0x10, dpl: 0, ist: 0)[5] == 0x8e)  // present, DPL 0, interrupt gate
    }

    @Test func theIDTHasAGatePerExceptionLeadingToItsStub() {
        let idt = ExceptionStubs.idtBytes
        #expect(idt.count == 32 * 16)
        #expect(Int(ExceptionStubs.idtLimit) == idt.count - 1)
        for vector in 0..<32 {
            let gate = Array(idt[vector * 16..<vector * 16 + 16])
            let low = UInt64(gate[0]) | UInt64(gate[1]) << 8
            let middle = UInt64(gate[6]) | UInt64(gate[7]) << 8
            let high = gate[8..<12].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            #expect(low | middle << 16 | high << 32 == ExceptionStubs.stubPage + UInt64(vector * 16))
            #expect(gate[2] == 0x10 && gate[3] == 0)
            #expect(gate[4] == ([2, 8, 18].contains(vector) ? 1 : 0), "IST for vector \(vector)")
            #expect(gate[5] == ([3, 4].contains(vector) ? 0xee : 0x8e), "type for vector \(vector)")
        }
    }

    @Test func stubsPushAZeroOnlyWhereTheCPUPushesNoErrorCode() {
        #expect(ExceptionStubs.stub(vector: 0) == [0x6a, 0x00, 0xe6, 0x43, 0x48, 0x83, 0xc4, 0x08, 0x48, 0xcf]
                + [UInt8](repeating: 0xcc, count: 6))
        #expect(ExceptionStubs.stub(vector: 14) == [0xe6, 0x43, 0x48, 0x83, 0xc4, 0x08, 0x48, 0xcf]
                + [UInt8](repeating: 0xcc, count: 8))
        for vector in UInt8(0)..<32 {
            let stub = ExceptionStubs.stub(vector: vector)
            #expect(stub.count == 16)
            #expect((stub.first == 0x6a) != ExceptionStubs.pushesErrorCode(vector))
            // The vector is recovered from the RIP at the out or just after it.
            let out = ExceptionStubs.stubPage + UInt64(vector) * 16 + (stub.first == 0x6a ? 2 : 0)
            #expect(ExceptionStubs.vector(atStub: out) == vector)
            #expect(ExceptionStubs.vector(atStub: out + 2) == vector)
        }
        #expect(ExceptionStubs.vector(atStub: ExceptionStubs.stubPage + ExceptionStubs.syscallEntryOffset) == nil)
    }

    @Test func theSyscallEntryIsAHostCallThenSysret() {
        let page = ExceptionStubs.stubPageBytes
        let entry = Int(ExceptionStubs.syscallEntryOffset)
        #expect(Array(page[entry..<entry + 5]) == [0xe6, 0x42, 0x48, 0x0f, 0x07])
        #expect(X86CPUState.syscallMSRs(cpl0Entry: true)[1].value == ExceptionStubs.stubPage + 0x200)
        #expect(X86CPUState.syscallMSRs(cpl0Entry: false)[1].value == GuestLayout.syscallStubPage)
    }

    @Test func theTSSPointsAtTheCPL0Stacks() {
        let tss = X86CPUState.tssBytes
        func word(_ offset: Int) -> UInt64 { tss[offset..<offset + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
        #expect(word(0x04) == ExceptionStubs.kernelStackPage + 4096)
        #expect(word(0x24) == ExceptionStubs.criticalStackPage + 4096)
    }

    @Test func theCPL0PagesLieApartWithUnmappedGuardsAndAboveTheUserStack() {
        let pages = [ExceptionStubs.criticalStackPage, ExceptionStubs.kernelStackPage, ExceptionStubs.stubPage,
                     ExceptionStubs.idtPage, GuestLayout.systemPage]
        #expect(Set(pages).count == pages.count)
        #expect(pages.allSatisfy { $0 > GuestLayout.stackTop })
        // Unmapped pages above each stack, so an overflow or underflow faults instead of landing elsewhere.
        #expect(!pages.contains(ExceptionStubs.kernelStackPage + 4096))
        #expect(!pages.contains(ExceptionStubs.criticalStackPage + 4096))
        #expect(!pages.contains(ExceptionStubs.criticalStackPage - 4096))
        #expect(!pages.contains(ExceptionStubs.kernelStackPage - 4096))
    }

    @Test func handlersCannotGiveUserModePrivilegedFlags() {
        let flags = ExceptionStubs.userSettableFlags
        #expect(flags & 0x3000 == 0)   // IOPL
        #expect(flags & 0x200 == 0)    // IF
        #expect(flags & 0x4000 == 0)   // NT
        #expect(flags & 0x20000 == 0)  // VM
        #expect(flags & 0x1 != 0 && flags & 0x40000 != 0)  // CF, AC
    }
}
