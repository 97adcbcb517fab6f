
/// The x86-64 processor state a guest program starts in: 64-bit long mode at CPL 3, paging on,
/// a host-built GDT and TSS in a supervisor-only read-only page, no IDT, IOPL 0, and `syscall`
/// entering a host-written stub that turns it into a host call.
///
/// Port I/O: with IOPL 0 the CPU consults the TSS I/O-permission bitmap, which allows port
/// `hostCallPort` only. `out` to any other port, `in`, `cli` and `sti` raise #GP in the guest.
enum X86CPUState {
    /// Selectors (Linux's layout): kernel code/data, then user data and 64-bit user code at RPL 3.
    static let kernelCode: UInt16 = 0x10, kernelData: UInt16 = 0x18
    static let userData: UInt16 = 0x2b, userCode: UInt16 = 0x33

    /// GDT descriptors, with the accessed bit preset so the CPU never writes the read-only page.
    static let gdt: [UInt64] = [
        0,                      // 0x00 null
        0,                      // 0x08 unused
        0x00af_9b00_0000_ffff,  // 0x10 kernel code, 64-bit
        0x00cf_9300_0000_ffff,  // 0x18 kernel data
        0x00cf_fb00_0000_ffff,  // 0x20 user code, 32-bit (unused)
        0x00cf_f300_0000_ffff,  // 0x28 user data
        0x00af_fb00_0000_ffff,  // 0x30 user code, 64-bit
        // 0x38 unused; 0x40: the TSS descriptor (16 bytes), filled in by `gdtBytes`.
    ]
    static let tssSelector: UInt16 = 0x40
    /// Where the TSS sits inside the system page.
    static let tssOffset: UInt64 = 0x100
    /// The 64-bit TSS is 104 bytes; the I/O bitmap follows it.
    static let tssSize = 104
    /// I/O bitmap: one bit per port (1 = denied), up to the byte holding `hostCallPort`, then the
    /// mandatory 0xff. Ports past the TSS limit are denied by the CPU.
    static var ioBitmap: [UInt8] {
        var bitmap = [UInt8](repeating: 0xff, count: Int(hostCallPort) / 8 + 2)
        bitmap[Int(hostCallPort) / 8] &= ~UInt8(1 << (hostCallPort % 8))
        return bitmap
    }
    static var tssLimit: UInt32 { UInt32(tssSize + ioBitmap.count - 1) }

    /// The TSS: the I/O-map base (offset 0x66), the bitmap, and the CPL 0 stack pointers (RSP0,
    /// IST1) the exception stubs use on hardware KVM; all else zero.
    static var tssBytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: tssSize)
        bytes[0x66] = UInt8(tssSize & 0xff)
        bytes[0x67] = UInt8(tssSize >> 8)
        for field in ExceptionStubs.tssStackFields {
            bytes.replaceSubrange(field.offset..<field.offset + 8, with: field.value.littleEndianBytes)
        }
        return bytes + ioBitmap
    }

    /// The GDT with the 16-byte system descriptor for the TSS (type 0xb: busy 64-bit TSS, DPL 0).
    static var gdtBytes: [UInt8] {
        let base = GuestLayout.systemPage + tssOffset
        let limit = UInt64(tssLimit)
        let low = (limit & 0xffff) | ((base & 0xff_ffff) << 16) | (UInt64(0x8b) << 40)
            | (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56)
        let high = base >> 32
        return [UInt8](littleEndianWords: gdt + [0, low, high])
    }

    static let cr0: UInt64 = 0x8005_0033     // PG, WP, NE, ET, MP, PE
    static let cr4: UInt64 = 0x620           // PAE, OSFXSR, OSXMMEXCPT
    static let efer: UInt64 = 0xd01          // NXE, LMA, LME, SCE
    static let rflags: UInt64 = 0x2          // IOPL 0, reserved bit 1; interrupts off
    /// The flags user code may own: CF, PF, AF, ZF, SF, DF, OF, AC (not TF, IF, IOPL).
    static let userFlagsMask: UInt64 = 0x4_0cd5

    /// The `syscall` entry stub: `out %al, $0x42` (the host call: the Linux system-call registers
    /// are the host-call registers) then `jmp *%rcx` (back to the instruction after `syscall`;
    /// r11 keeps the flags, as on Linux). On PVM `syscall` stays at CPL 3, so the stub is user code.
    static let syscallStub: [UInt8] = [0xe6, UInt8(hostCallPort), 0xff, 0xe1]

    /// Where a guest function called by the host returns to: `mov %rax, %rdi; mov $guestCallReturn,
    /// %eax; out %al, $0x42; ud2`, in the stub page after the syscall stub.
    static let returnStubAddress = GuestLayout.syscallStubPage + 0x40
    static let returnStub: [UInt8] = [0x48, 0x89, 0xc7, 0xb8]
        + UInt32(HostCallNumber.guestCallReturn).littleEndianBytes
        + [0xe6, UInt8(hostCallPort), 0x0f, 0x0b]

    /// Where the exitless `syscall` entry starts in the user stub page (PVM), and its code
    /// (`ExitlessSyscallEntry`, `.user`); its plain exit is the stub at the page's start.
    static let exitlessSyscallEntryOffset: UInt64 = 0x80
    static let exitlessSyscallStub = ExitlessSyscallEntry.code(
        at: GuestLayout.syscallStubPage + exitlessSyscallEntryOffset, mailbox: GuestLayout.mailboxPage,
        plainExit: GuestLayout.syscallStubPage, mode: .user)
    /// The hardware-KVM exitless entry (`.kernel`), in the supervisor-only page
    /// `GuestLayout.kernelSyscallPage` after that page's own plain exit (`out %al, $0x42; sysretq`).
    static let kernelExitlessEntryOffset: UInt64 = 0x80
    static let kernelSyscallPageBytes: [UInt8] = ExceptionStubs.syscallEntry
        + [UInt8](repeating: 0xcc, count: Int(kernelExitlessEntryOffset) - ExceptionStubs.syscallEntry.count)
        + ExitlessSyscallEntry.code(at: GuestLayout.kernelSyscallPage + kernelExitlessEntryOffset, mailbox: GuestLayout.mailboxPage,
                                    plainExit: GuestLayout.kernelSyscallPage, mode: .kernel)
    /// Whether `rip` lies inside an exitless entry's body (a thread there has a call in flight in
    /// the mailbox): the user stub's (PVM) or the CPL 0 one's (hardware KVM).
    static func isInExitlessEntry(_ rip: UInt64) -> Bool {
        let user = GuestLayout.syscallStubPage + exitlessSyscallEntryOffset
        let kernel = GuestLayout.kernelSyscallPage + kernelExitlessEntryOffset
        return (rip >= user && rip < user + UInt64(exitlessSyscallStub.count))
            || (rip >= kernel && rip < GuestLayout.kernelSyscallPage + UInt64(kernelSyscallPageBytes.count))
    }
    /// The answer that sends a posted system call back through the exit.
    static let exitlessMustExit = ExitlessSyscallEntry.mustExit

    /// MSRs for `syscall`: STAR with Linux's selectors; LSTAR at the user stub (PVM, where
    /// `syscall` stays at CPL 3; no flag masking, the stub returns with `jmp`) or at the CPL 0
    /// entry of the exception stubs (hardware; FMASK clears TF, DF, IF, AC like Linux, and
    /// `sysretq` restores the guest's flags from R11).
    /// The CPL 0 entry exists only where the stubs are installed.
    /// `exitless`: LSTAR at the exitless entry instead (the user one, or the CPL 0 one).
    static func syscallMSRs(cpl0Entry: Bool, exitless: Bool = false) -> [(index: UInt32, value: UInt64)] {
        let entry = switch (cpl0Entry, exitless) {
        case (true, false): ExceptionStubs.stubPage + ExceptionStubs.syscallEntryOffset
        case (true, true): GuestLayout.kernelSyscallPage + kernelExitlessEntryOffset
        case (false, false): GuestLayout.syscallStubPage
        case (false, true): GuestLayout.syscallStubPage + exitlessSyscallEntryOffset
        }
        return [
            (0xc000_0081, UInt64(0x0023_0010) << 32),  // STAR: sysret base 0x23, syscall CS 0x10
            (0xc000_0082, entry),                      // LSTAR
            (0xc000_0084, cpl0Entry ? 0x4_7700 : 0),   // FMASK
        ]
    }

    /// Maps the system page with the GDT and TSS (supervisor-only, read-only, NX) and the syscall
    /// stub page (user, read + execute, read-only), and writes their contents.
    /// Also the IDT, its stubs and the CPL 0 stacks, on every platform, so that the guest sees the
    /// same address space everywhere (only hardware KVM loads the IDT and uses the CPL 0 entry).
    static func installSystemTables(in space: AddressSpace) throws(SandboxError) {
        try ExceptionStubs.install(in: space)
        try space.mapNew(GuestLayout.systemPage, length: PageSize.bytes, [.read, .supervisor])
        try space.mapNew(GuestLayout.syscallStubPage, length: PageSize.bytes, [.read, .execute])
        try space.mapNew(GuestLayout.kernelSyscallPage, length: PageSize.bytes, [.read, .execute, .supervisor])
        do {
            try space.hostWrite(gdtBytes, at: GuestLayout.systemPage)
            try space.hostWrite(tssBytes, at: GuestLayout.systemPage + tssOffset)
            try space.hostWrite(syscallStub, at: GuestLayout.syscallStubPage)
            try space.hostWrite(returnStub, at: returnStubAddress)
            try space.hostWrite(exitlessSyscallStub, at: GuestLayout.syscallStubPage + exitlessSyscallEntryOffset)
            try space.hostWrite(kernelSyscallPageBytes, at: GuestLayout.kernelSyscallPage)
        } catch {
            preconditionFailure("system pages were just mapped")
        }
    }

    private static func segment(_ selector: UInt16, code: Bool) -> SegmentRegister {
        var s = SegmentRegister()
        s.base = 0
        s.limit = 0xffff_ffff
        s.selector = selector
        s.type = code ? 0xb : 0x3
        s.present = 1
        s.dpl = 3
        s.db = code ? 0 : 1
        s.s = 1
        s.l = code ? 1 : 0
        s.g = 1
        return s
    }

    /// Special registers for a user-mode start on `root`'s page tables, with our TSS in TR.
    static func specialRegisters(from initial: SpecialRegisters, pageTableRoot root: UInt64, exceptionStubs: Bool) -> SpecialRegisters {
        var sregs = initial
        sregs.cr0 = cr0
        sregs.cr3 = root
        sregs.cr4 = cr4
        sregs.efer = efer
        sregs.cs = segment(userCode, code: true)
        sregs.ss = segment(userData, code: false)
        sregs.ds = sregs.ss
        sregs.es = sregs.ss
        sregs.fs = sregs.ss
        sregs.gs = sregs.ss
        sregs.gdt.base = GuestLayout.systemPage
        sregs.gdt.limit = UInt16(gdtBytes.count - 1)
        sregs.tr = SegmentRegister()
        sregs.tr.base = GuestLayout.systemPage + tssOffset
        sregs.tr.limit = tssLimit
        sregs.tr.selector = tssSelector
        sregs.tr.type = 0xb  // a busy 64-bit TSS, as LTR leaves it (VMX entry requires busy)
        sregs.tr.present = 1
        sregs.idt.base = exceptionStubs ? ExceptionStubs.idtPage : 0
        sregs.idt.limit = exceptionStubs ? ExceptionStubs.idtLimit : 0
        return sregs
    }

    /// `sregs` with user-mode code and stack segments (after a CPL 0 stub is left by the host).
    static func userMode(_ sregs: SpecialRegisters) -> SpecialRegisters {
        var sregs = sregs
        sregs.cs = segment(userCode, code: true)
        sregs.ss = segment(userData, code: false)
        return sregs
    }

    /// General-purpose registers at the entry point: `rsp` at argc, `rdx` 0 (no exit handler for crt1).
    static func initialRegisters(entry: UInt64, stackPointer: UInt64) -> GuestRegisters {
        var regs = GuestRegisters()
        regs.rip = entry
        regs.rsp = stackPointer
        regs.rflags = rflags
        return regs
    }
}

/// CPU exception vectors, their mnemonics, and the signal a Linux process would get for each.
public enum X86Exception {
    /// `#PF` etc. for a vector.
    public static func mnemonic(_ vector: UInt8) -> String {
        let names: [UInt8: String] = [
            0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
            10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
            19: "#XM", 20: "#VE", 21: "#CP",
        ]
        return names[vector] ?? "vector \(vector)"
    }

    /// A readable name for a vector.
    public static func name(_ vector: UInt8) -> String {
        let names: [UInt8: String] = [
            0: "divide error", 1: "debug", 2: "non-maskable interrupt", 3: "breakpoint", 4: "overflow",
            5: "bound range exceeded", 6: "invalid opcode", 7: "device not available", 8: "double fault",
            10: "invalid TSS", 11: "segment not present", 12: "stack-segment fault", 13: "general protection",
            14: "page fault", 16: "x87 floating-point error", 17: "alignment check", 18: "machine check",
            19: "SIMD floating-point exception", 20: "virtualization exception", 21: "control protection",
        ]
        return names[vector] ?? "exception"
    }

    /// The signal Linux would deliver for this vector (SIGFPE, SIGILL, SIGTRAP, SIGBUS, else SIGSEGV).
    public static func signal(_ vector: UInt8) -> Int32 {
        switch vector {
        case 0, 16, 19: return 8   // SIGFPE
        case 6: return 4           // SIGILL
        case 1, 3: return 5        // SIGTRAP
        case 17: return 7          // SIGBUS
        default: return 11         // SIGSEGV
        }
    }

    /// Whether the vector pushes an error code.
    public static func hasErrorCode(_ vector: UInt8) -> Bool { [8, 10, 11, 12, 13, 14, 17, 21].contains(vector) }
}
