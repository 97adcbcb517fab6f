/// The exitless `syscall` entry, host-written and read-only, in its two forms:
/// - `.user` (PVM, where `syscall` stays at CPL 3): in the user stub page, returns with
///   `jmp *%rcx` (R11 is clobbered, as the Linux ABI allows);
/// - `.kernel` (hardware KVM, where `syscall` enters CPL 0 on the guest's stack): in a
///   supervisor-only page of its own within RIP-relative reach of the mailbox, returns with
///   `sysretq`, with R11 reloaded and masked to the flags user code may own (the guest's
///   page cannot hand itself IOPL, IF or TF through it).
///
/// What it does: when a host thread polls the mailbox (`Mailbox`, word 128), it posts the call
/// there (number with bit 62 set: a Linux system call; the six arguments; the sequence number
/// last), spins up to `spinLimit` polls on the answer (~50 us on PVM, two exits' worth: serving a
/// path lookup takes longer than the SDK's 256), and returns. With no poller it takes the plain
/// exit (`out %al, $0x42` at `plainExit`) at once; when no answer comes it exits with
/// `KS_HC_MAILBOX_WAIT` (0xf02, the sequence in rdi); when the answer is `mustExit` (a call the
/// vCPU thread must serve) it restores rax and r11 and takes the plain exit. It touches no
/// stack (the guest's red zone stays intact; at CPL 0 RSP is still the guest's), only rax,
/// r11 and, in the user form, the arithmetic flags (no compiler keeps them across a
/// `syscall`; `sysretq` restores them in the CPL 0 form). Assembled from:
///
///     entry: cmpq $0, M+128(%rip); je exit; mov %r11, M+136(%rip); mov %rax, M+8(%rip)
///            btsq $62, M+8(%rip); mov %rdi..%r9, M+16..M+56(%rip)
///            mov M(%rip), %r11; inc %r11; mov %r11, M(%rip); mov $2048, %eax
///     spin:  cmp %r11, M+64(%rip); je answered; pause; dec %eax; jnz spin
///            mov %r11, %rdi; mov $0xf02, %eax; out %al, $0x42; mov M+16(%rip), %rdi; jmp check
///     answered: mov M+72(%rip), %rax
///     check: movabs $1<<63, %r11; cmp %r11, %rax; jne done
///            mov M+8(%rip), %rax; btr $62, %rax; mov M+136(%rip), %r11; [and $mask, %r11]; jmp exit
///     done:  jmp *%rcx                                  (.user)
///            mov M+136(%rip), %r11; and $mask, %r11; sysretq   (.kernel)
enum ExitlessSyscallEntry {
    /// Where the entry runs and how it returns.
    enum Mode {
        /// PVM: CPL 3, back with `jmp *%rcx`.
        case user
        /// Hardware KVM: CPL 0, back with `sysretq`.
        case kernel
    }

    /// Polls of the answer before the fallback exit.
    static let spinLimit: UInt32 = 2048
    /// The answer that sends a posted system call back through the plain exit.
    static let mustExit: Int64 = Int64.min

    /// The entry's machine code when placed at `address`, posting to the mailbox at `mailbox`
    /// and falling back to the plain exit at `plainExit`. All three are host constants within
    /// +-2 GiB of each other (RIP-relative reach).
    static func code(at address: UInt64, mailbox: UInt64, plainExit: UInt64, mode: Mode) -> [UInt8] {
        var e = Emitter(origin: address)
        let m = mailbox
        e.ripRelative([0x48, 0x83, 0x3d], m + 128, immediate: [0x00])      // cmpq $0, M+128(%rip)
        e.near([0x0f, 0x84], to: plainExit)                                  // je exit
        e.ripRelative([0x4c, 0x89, 0x1d], m + 136)                           // mov %r11, M+136(%rip)
        e.ripRelative([0x48, 0x89, 0x05], m + 8)                             // mov %rax, M+8(%rip)
        e.ripRelative([0x48, 0x0f, 0xba, 0x2d], m + 8, immediate: [62])      // btsq $62, M+8(%rip)
        let argumentStores: [[UInt8]] = [[0x48, 0x89, 0x3d], [0x48, 0x89, 0x35], [0x48, 0x89, 0x15],  // rdi, rsi, rdx
                                         [0x4c, 0x89, 0x15], [0x4c, 0x89, 0x05], [0x4c, 0x89, 0x0d]]  // r10, r8, r9
        for (index, store) in argumentStores.enumerated() { e.ripRelative(store, m + 16 + 8 * UInt64(index)) }
        e.ripRelative([0x4c, 0x8b, 0x1d], m)                                 // mov M(%rip), %r11
        e.emit([0x49, 0xff, 0xc3])                                           // inc %r11
        e.ripRelative([0x4c, 0x89, 0x1d], m)                                 // mov %r11, M(%rip)
        e.emit([0xb8] + spinLimit.littleEndianBytes)                         // mov $spinLimit, %eax
        let spin = e.here
        e.ripRelative([0x4c, 0x39, 0x1d], m + 64)                            // cmp %r11, M+64(%rip)
        let toAnswered = e.short(0x74)                                       // je answered
        e.emit([0xf3, 0x90, 0xff, 0xc8])                                     // pause; dec %eax
        e.short(0x75, back: spin)                                            // jnz spin
        e.emit([0x4c, 0x89, 0xdf])                                           // mov %r11, %rdi
        e.emit([0xb8] + UInt32(HostCallNumber.mailboxWait).littleEndianBytes) // mov $0xf02, %eax
        e.emit([0xe6, UInt8(hostCallPort)])                                  // out %al, $0x42
        e.ripRelative([0x48, 0x8b, 0x3d], m + 16)                            // mov M+16(%rip), %rdi
        let toCheck = e.short(0xeb)                                          // jmp check
        e.land(toAnswered)
        e.ripRelative([0x48, 0x8b, 0x05], m + 72)                            // answered: mov M+72(%rip), %rax
        e.land(toCheck)
        e.emit([0x49, 0xbb] + UInt64(bitPattern: mustExit).littleEndianBytes) // check: movabs $1<<63, %r11
        e.emit([0x4c, 0x39, 0xd8])                                           // cmp %r11, %rax
        let toDone = e.short(0x75)                                           // jne done
        e.ripRelative([0x48, 0x8b, 0x05], m + 8)                             // mov M+8(%rip), %rax
        e.emit([0x48, 0x0f, 0xba, 0xf0, 62])                                 // btr $62, %rax
        e.ripRelative([0x4c, 0x8b, 0x1d], m + 136)                           // mov M+136(%rip), %r11
        if mode == .kernel { e.maskUserFlags() }
        e.near([0xe9], to: plainExit)                                        // jmp exit
        e.land(toDone)
        switch mode {
        case .user:
            e.emit([0xff, 0xe1])                                             // done: jmp *%rcx
        case .kernel:
            e.ripRelative([0x4c, 0x8b, 0x1d], m + 136)                       // done: mov M+136(%rip), %r11
            e.maskUserFlags()
            e.emit([0x48, 0x0f, 0x07])                                       // sysretq
        }
        return e.bytes
    }
}

/// Appends x86-64 instructions at a known address, resolving RIP-relative operands and jumps.
struct Emitter {
    let origin: UInt64
    var bytes: [UInt8] = []

    /// The address of the next byte.
    var here: UInt64 { origin + UInt64(bytes.count) }

    mutating func emit(_ code: [UInt8]) { bytes += code }

    /// `opcode` + a disp32 to `target` + `immediate` (the displacement counts from the end).
    mutating func ripRelative(_ opcode: [UInt8], _ target: UInt64, immediate: [UInt8] = []) {
        let end = here + UInt64(opcode.count + 4 + immediate.count)
        bytes += opcode + Self.rel32(from: end, to: target) + immediate
    }

    /// A jump with a rel32 (`e9`, `0f 8x`) to `target`.
    mutating func near(_ opcode: [UInt8], to target: UInt64) {
        bytes += opcode + Self.rel32(from: here + UInt64(opcode.count + 4), to: target)
    }

    /// A short forward jump whose target `land` fixes later; returns its displacement's index.
    mutating func short(_ opcode: UInt8) -> Int {
        bytes += [opcode, 0]
        return bytes.count - 1
    }

    /// A short backward jump to `target`.
    mutating func short(_ opcode: UInt8, back target: UInt64) {
        let distance = here + 2 - target
        precondition(distance <= 128, "short jump out of reach")
        bytes += [opcode, UInt8(truncatingIfNeeded: -Int64(distance))]
    }

    /// Makes the short jump at `index` land here.
    mutating func land(_ index: Int) {
        let distance = bytes.count - (index + 1)
        precondition(distance < 128, "short jump out of reach")
        bytes[index] = UInt8(distance)
    }

    /// `and $userFlagsMask, %r11`: what `sysretq` may load into RFLAGS.
    mutating func maskUserFlags() {
        emit([0x49, 0x81, 0xe3] + UInt32(X86CPUState.userFlagsMask).littleEndianBytes)
    }

    private static func rel32(from end: UInt64, to target: UInt64) -> [UInt8] {
        let distance = Int64(bitPattern: target &- end)
        precondition(distance >= Int64(Int32.min) && distance <= Int64(Int32.max), "RIP-relative target out of reach")
        return Int32(distance).littleEndianBytes
    }
}
