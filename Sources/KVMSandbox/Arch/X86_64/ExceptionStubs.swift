/// How CPU exceptions reach the host on hardware KVM (VMX/SVM), where an exception without an
/// IDT is a triple fault and its vector is lost.
///
/// The host builds, in supervisor-only pages the guest can neither write nor read:
/// - an IDT whose 32 exception gates (interrupt gates, DPL 0; DPL 3 for `int3`/`into` so they
///   raise #BP/#OF as on PVM) lead to one 16-byte stub per vector;
/// - the stubs: `push $0` where the CPU pushes no error code, `out %al, $0x43` (the exception
///   exit: no register is touched, so the host sees the guest's own), then `add $8, %rsp;
///   iretq`, which resumes the guest with whatever frame the host left on the stack;
/// - a CPL 0 stack (TSS.RSP0) for the switch from user mode, and a separate IST stack for
///   #DF, NMI and #MC, so a fault with a bad user RSP, or inside a stub, still ends in a report;
/// - a `syscall` entry (LSTAR): `out %al, $0x42; sysretq`, the host call at CPL 0 on the
///   guest's registers, back to user mode with RCX/R11.
/// Only these host-written instructions ever run at CPL 0; the guest's own code never does.
enum ExceptionStubs {
    /// The port the stubs report on. The TSS I/O bitmap denies it to user code, so only a stub
    /// can make this exit.
    static let reportPort: UInt16 = 0x43
    /// Bytes per stub; the vector is `(rip - stubPage) / stubSize`.
    static let stubSize = 16
    /// Vectors with a stub (the architectural exceptions).
    static let vectorCount = 32
    /// Where the `syscall` entry sits in the stub page.
    static let syscallEntryOffset: UInt64 = 0x200
    /// The IST slot (1-based) used by #DF, NMI and #MC.
    static let criticalStackSlot: UInt8 = 1
    static let criticalVectors: Set<UInt8> = [2, 8, 18]

    /// The page of stubs (supervisor, read + execute).
    static let stubPage = GuestLayout.systemPage - 2 * PageSize.bytes
    /// The IDT page (supervisor, read-only).
    static let idtPage = GuestLayout.systemPage - PageSize.bytes
    /// CPL 0 stack: one page; TSS.RSP0 is its top. Unmapped pages lie on both sides.
    static let kernelStackPage = GuestLayout.systemPage - 4 * PageSize.bytes
    /// The IST stack for #DF/NMI/#MC: one page, with an unmapped page above and below.
    static let criticalStackPage = GuestLayout.systemPage - 6 * PageSize.bytes

    /// Whether the CPU pushes an error code for `vector`.
    static func pushesErrorCode(_ vector: UInt8) -> Bool { [8, 10, 11, 12, 13, 14, 17, 21, 29, 30].contains(vector) }

    /// The machine code of the stub for `vector`, padded with `int3` to `stubSize` bytes.
    static func stub(vector: UInt8) -> [UInt8] {
        var code: [UInt8] = pushesErrorCode(vector) ? [] : [0x6a, 0x00]   // push $0
        code += [0xe6, UInt8(reportPort)]                                   // out %al, $0x43
        code += [0x48, 0x83, 0xc4, 0x08]                                    // add $8, %rsp
        code += [0x48, 0xcf]                                                // iretq
        return code + [UInt8](repeating: 0xcc, count: stubSize - code.count)
    }

    /// `out %al, $0x42; sysretq`.
    static let syscallEntry: [UInt8] = [0xe6, UInt8(hostCallPort), 0x48, 0x0f, 0x07]

    /// The stub page's contents.
    static var stubPageBytes: [UInt8] {
        var bytes = (0..<UInt8(vectorCount)).flatMap { stub(vector: $0) }
        bytes += [UInt8](repeating: 0xcc, count: Int(syscallEntryOffset) - bytes.count)
        return bytes + syscallEntry
    }

    /// A 16-byte 64-bit interrupt gate to `handler` through code selector `selector`.
    static func gate(handler: UInt64, selector: UInt16, dpl: UInt8, ist: UInt8) -> [UInt8] {
        let typeAttributes: UInt8 = 0x80 | (dpl & 3) << 5 | 0x0e   // present, DPL, 64-bit interrupt gate
        var bytes: [UInt8] = []
        bytes += UInt16(truncatingIfNeeded: handler).littleEndianBytes
        bytes += selector.littleEndianBytes
        bytes += [ist & 7, typeAttributes]
        bytes += UInt16(truncatingIfNeeded: handler >> 16).littleEndianBytes
        bytes += UInt32(truncatingIfNeeded: handler >> 32).littleEndianBytes
        bytes += [0, 0, 0, 0]
        return bytes
    }

    /// The IDT: gates for the 32 exception vectors.
    static var idtBytes: [UInt8] {
        var bytes: [UInt8] = []
        for vector in 0..<UInt8(vectorCount) {
            let handler: UInt64 = stubPage + UInt64(vector) * UInt64(stubSize)
            let dpl: UInt8 = vector == 3 || vector == 4 ? 3 : 0
            let ist: UInt8 = criticalVectors.contains(vector) ? criticalStackSlot : 0
            bytes += gate(handler: handler, selector: X86CPUState.kernelCode, dpl: dpl, ist: ist)
        }
        return bytes
    }
    static var idtLimit: UInt16 { UInt16(vectorCount * 16 - 1) }

    /// TSS fields for the CPL 0 stacks: (offset in the TSS, value).
    static let tssStackFields: [(offset: Int, value: UInt64)] = [
        (0x04, kernelStackPage + PageSize.bytes),                                     // RSP0
        (0x24 + 8 * (Int(criticalStackSlot) - 1), criticalStackPage + PageSize.bytes), // IST1
    ]

    /// Maps and writes the IDT, stubs and stacks.
    static func install(in space: AddressSpace) throws(SandboxError) {
        try space.mapNew(stubPage, length: PageSize.bytes, [.read, .execute, .supervisor])
        try space.mapNew(idtPage, length: PageSize.bytes, [.read, .supervisor])
        try space.mapNew(kernelStackPage, length: PageSize.bytes, [.read, .write, .supervisor])
        try space.mapNew(criticalStackPage, length: PageSize.bytes, [.read, .write, .supervisor])
        do {
            try space.hostWrite(stubPageBytes, at: stubPage)
            try space.hostWrite(idtBytes, at: idtPage)
        } catch {
            preconditionFailure("stub pages were just mapped")
        }
    }

    /// The exception frame a stub leaves at RSP: the error code (or the stub's 0), then what the
    /// CPU pushed.
    struct Frame: Equatable {
        var errorCode: UInt64, rip: UInt64, cs: UInt64, rflags: UInt64, rsp: UInt64, ss: UInt64

        init(words: [UInt64]) {
            (errorCode, rip, cs, rflags, rsp, ss) = (words[0], words[1], words[2], words[3], words[4], words[5])
        }
        var words: [UInt64] { [errorCode, rip, cs, rflags, rsp, ss] }
        static let size: UInt64 = 48

        /// Whether the exception interrupted user code (not a stub).
        var fromUserMode: Bool { cs & 3 == 3 }
    }

    /// The vector of the stub at `rip` (either at its `out` or just after it), if it is one.
    static func vector(atStub rip: UInt64) -> UInt8? {
        guard rip >= stubPage, rip < stubPage + UInt64(vectorCount * stubSize) else { return nil }
        return UInt8((rip - stubPage) / UInt64(stubSize))
    }

    /// RFLAGS bits an exception handler may hand back to user mode: the arithmetic flags, TF, DF
    /// and AC. IOPL, IF, NT, RF and VM are never taken from it (an `iretq` at CPL 0 would).
    static let userSettableFlags: UInt64 = 0x4_0dd5
}
