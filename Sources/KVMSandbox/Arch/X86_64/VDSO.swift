/// The guest's vDSO: a small ELF shared object the host writes at `GuestLayout.vdsoPage` and
/// names in the auxiliary vector (`AT_SYSINFO_EHDR`), as Linux does, so that glibc, musl and Go
/// find `__vdso_clock_gettime`, `__vdso_gettimeofday`, `__vdso_time` and `__vdso_getcpu` (version
/// `LINUX_2.6`) and call them instead of making a system call. On a VM they are the calls that
/// cost most for what they do: an exit (25-180 us on PVM) to read a clock.
///
/// The clocks are computed in the guest from the time-stamp counter and parameters the host
/// writes to `GuestLayout.vdsoDataPage` before every entry (`DataLayout`; `TSCClock` computes
/// them): `ns = base + ((rdtsc - tscBase) * mult) >> 32`. Served in the guest: CLOCK_REALTIME,
/// MONOTONIC, MONOTONIC_RAW, REALTIME_COARSE, MONOTONIC_COARSE, BOOTTIME (the host serves its
/// MONOTONIC for all but the two REALTIME ones, as before). Everything else (CPU-time clocks,
/// a `gettimeofday` time zone, parameters the host disabled) takes the system call, from inside
/// the vDSO.
///
/// Safe by construction: the pages are the guest's own (it may unmap or corrupt them and so lie
/// to itself about the time), the host never reads them, and a pointer the guest passes is
/// written by the guest's own instructions under its own page tables: a bad one faults in the
/// guest (SIGSEGV), as with Linux's vDSO.
enum VDSO {
    /// Where the host's parameters live in the data page (little-endian 64-bit words).
    enum DataLayout {
        /// 1 when the parameters are valid; 0: every call takes the system call.
        static let enabled: UInt64 = 0
        /// The guest TSC value the bases were taken at.
        static let tscBase: UInt64 = 8
        /// CLOCK_MONOTONIC at `tscBase`, in nanoseconds.
        static let monotonicBase: UInt64 = 16
        /// CLOCK_REALTIME at `tscBase`, in nanoseconds since the epoch.
        static let realtimeBase: UInt64 = 24
        /// Nanoseconds per TSC tick, times 2^32.
        static let multiplier: UInt64 = 32
    }

    /// The symbols, in symbol-table order (index 1 on).
    static let symbols = ["__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time", "__vdso_getcpu"]
    /// The shared object's name and the symbols' version.
    static let soname = "linux-vdso.so.1", version = "LINUX_2.6"
    /// Where the code starts in the image.
    static let codeOffset = 0x400

    /// The image (one page), built for `GuestLayout.vdsoPage` with its data at `GuestLayout.vdsoDataPage`.
    static let image: [UInt8] = build(at: GuestLayout.vdsoPage, data: GuestLayout.vdsoDataPage)

    /// The ELF image for `base`, with code reaching the data page at `data` RIP-relatively.
    static func build(at base: UInt64, data: UInt64) -> [UInt8] {
        let (code, entries) = Self.code(at: base + UInt64(codeOffset), data: data)
        var strings: [UInt8] = [0]
        func string(_ text: String) -> UInt32 {
            defer { strings += Array(text.utf8) + [0] }
            return UInt32(strings.count)
        }
        let sonameAt = string(soname), versionAt = string(version)
        let names = symbols.map(string)

        // Sections, one after another from 0xb0 (after the ELF header and two program headers).
        var out = [UInt8](repeating: 0, count: 0x1000)
        var cursor = 0xb0
        func place(_ bytes: [UInt8], align: Int = 8) -> Int {
            cursor = (cursor + align - 1) / align * align
            defer { cursor += bytes.count }
            out.replaceSubrange(cursor..<cursor + bytes.count, with: bytes)
            return cursor
        }
        // .dynsym: the null symbol, then each function (GLOBAL FUNC, in "section" 1: defined).
        var symbolTable = [UInt8](repeating: 0, count: 24)
        for (index, name) in names.enumerated() {
            symbolTable += name.littleEndianBytes + [0x12, 0] + UInt16(1).littleEndianBytes
            symbolTable += UInt64(entries[index]).littleEndianBytes + UInt64(16).littleEndianBytes
        }
        let symtab = place(symbolTable)
        // .hash: one bucket holding every symbol in one chain (lookups walk it; no hashing needed).
        let count = UInt32(symbols.count + 1)
        var hash: [UInt32] = [1, count, 1, 0]
        hash += (1..<count).map { $0 + 1 < count ? $0 + 1 : 0 }
        let hashAt = place(hash.flatMap(\.littleEndianBytes))
        // .gnu.version: version 2 (LINUX_2.6) for every symbol.
        let versym = place([UInt16(0)].flatMap(\.littleEndianBytes) + symbols.flatMap { _ in UInt16(2).littleEndianBytes })
        // .gnu.version_d: the base version (the object's name), then LINUX_2.6.
        func verdef(flags: UInt16, index: UInt16, name: String, nameAt: UInt32, next: UInt32) -> [UInt8] {
            UInt16(1).littleEndianBytes + flags.littleEndianBytes + index.littleEndianBytes + UInt16(1).littleEndianBytes
                + elfHash(name).littleEndianBytes + UInt32(20).littleEndianBytes + next.littleEndianBytes
                + nameAt.littleEndianBytes + UInt32(0).littleEndianBytes
        }
        let verdefAt = place(verdef(flags: 1, index: 1, name: soname, nameAt: sonameAt, next: 28)
                             + verdef(flags: 0, index: 2, name: version, nameAt: versionAt, next: 0), align: 4)
        let strtab = place(strings, align: 1)
        let dynamicEntries: [(Int64, UInt64)] = [
            (14, UInt64(sonameAt)), (4, UInt64(hashAt)), (5, UInt64(strtab)), (6, UInt64(symtab)), (10, UInt64(strings.count)),
            (11, 24), (0x6fff_fff0, UInt64(versym)), (0x6fff_fffc, UInt64(verdefAt)), (0x6fff_fffd, 2), (0, 0),
        ]
        let dynamic = place(dynamicEntries.flatMap { UInt64(bitPattern: $0.0).littleEndianBytes + $0.1.littleEndianBytes })
        let dynamicSize = UInt64(dynamicEntries.count * 16)
        precondition(cursor <= codeOffset && codeOffset + code.count <= out.count, "the vDSO's tables or code outgrew its page")
        out.replaceSubrange(codeOffset..<codeOffset + code.count, with: code)

        // ELF header: ELF64, little-endian, ET_DYN, x86-64, linked at 0 (loaded at `base`).
        var header: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        header += UInt16(3).littleEndianBytes + UInt16(62).littleEndianBytes + UInt32(1).littleEndianBytes
        header += UInt64(0).littleEndianBytes + UInt64(64).littleEndianBytes + UInt64(0).littleEndianBytes  // entry, phoff, shoff
        header += UInt32(0).littleEndianBytes + UInt16(64).littleEndianBytes + UInt16(56).littleEndianBytes
        header += UInt16(2).littleEndianBytes + UInt16(64).littleEndianBytes + UInt16(0).littleEndianBytes + UInt16(0).littleEndianBytes
        // PT_LOAD (read+execute) covering the page; PT_DYNAMIC (read).
        func programHeader(type: UInt32, flags: UInt32, offset: UInt64, size: UInt64, align: UInt64) -> [UInt8] {
            type.littleEndianBytes + flags.littleEndianBytes + offset.littleEndianBytes + offset.littleEndianBytes
                + offset.littleEndianBytes + size.littleEndianBytes + size.littleEndianBytes + align.littleEndianBytes
        }
        header += programHeader(type: 1, flags: 5, offset: 0, size: 0x1000, align: 0x1000)
        header += programHeader(type: 2, flags: 4, offset: UInt64(dynamic), size: dynamicSize, align: 8)
        out.replaceSubrange(0..<header.count, with: header)
        return out
    }

    /// The System V ELF hash of `name` (what `vd_hash` holds: loaders compare it with the
    /// version they look for).
    static func elfHash(_ name: String) -> UInt32 {
        var hash: UInt32 = 0
        for byte in name.utf8 {
            hash = (hash << 4) &+ UInt32(byte)
            let high = hash & 0xf000_0000
            if high != 0 { hash ^= high >> 24 }
            hash &= ~high
        }
        return hash
    }

    /// The functions' machine code placed at `origin`, and each symbol's offset in the image.
    ///
    ///     clock_gettime: cmpq $0, D(%rip); je 1f; cmp $7, %edi; ja 1f; mov $0xf3, %eax; bt %edi, %eax; jnc 1f
    ///                    NOW; mov $0x21, %ecx; bt %edi, %ecx; jc 2f; add D+16(%rip), %rax; jmp 3f
    ///                 2: add D+24(%rip), %rax
    ///                 3: xor %edx, %edx; mov $1e9, %ecx; div %rcx; mov %rax, (%rsi); mov %rdx, 8(%rsi); xor %eax, %eax; ret
    ///                 1: mov $228, %eax; syscall; ret
    ///     gettimeofday:  cmpq $0, D(%rip); je 1f; test %rsi, %rsi; jne 1f; test %rdi, %rdi; je 2f
    ///                    NOW; add D+24(%rip), %rax; xor %edx, %edx; mov $1000, %ecx; div %rcx
    ///                    xor %edx, %edx; mov $1e6, %ecx; div %rcx; mov %rax, (%rdi); mov %rdx, 8(%rdi)
    ///                 2: xor %eax, %eax; ret
    ///                 1: mov $96, %eax; syscall; ret
    ///     time:          cmpq $0, D(%rip); je 1f; NOW; add D+24(%rip), %rax; xor %edx, %edx; mov $1e9, %ecx; div %rcx
    ///                    test %rdi, %rdi; je 2f; mov %rax, (%rdi)
    ///                 2: ret
    ///                 1: mov $201, %eax; syscall; ret
    ///     getcpu:        test %rdi, %rdi; je 1f; movl $0, (%rdi)
    ///                 1: test %rsi, %rsi; je 2f; movl $0, (%rsi)
    ///                 2: xor %eax, %eax; ret
    ///     NOW = rdtsc; shl $32, %rdx; or %rdx, %rax; sub D+8(%rip), %rax; jae 1f; xor %eax, %eax
    ///        1: mulq D+32(%rip); shrd $32, %rdx, %rax      (rax: nanoseconds since tscBase)
    ///
    /// They use only rax, rcx, rdx and the flags (caller-saved), and no stack.
    static func code(at origin: UInt64, data: UInt64) -> (code: [UInt8], entries: [Int]) {
        var e = Emitter(origin: origin)
        var entries: [Int] = []
        func offset() -> Int { codeOffset + e.bytes.count }
        func now() {
            e.emit([0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0])      // rdtsc; shl $32, %rdx; or %rdx, %rax
            e.ripRelative([0x48, 0x2b, 0x05], data + DataLayout.tscBase)       // sub D+8(%rip), %rax
            e.emit([0x73, 0x02, 0x31, 0xc0])                                   // jae +2; xor %eax, %eax
            e.ripRelative([0x48, 0xf7, 0x25], data + DataLayout.multiplier)    // mulq D+32(%rip)
            e.emit([0x48, 0x0f, 0xac, 0xd0, 0x20])                             // shrd $32, %rdx, %rax
        }
        func enabledCheck() -> Int {
            e.ripRelative([0x48, 0x83, 0x3d], data + DataLayout.enabled, immediate: [0x00])  // cmpq $0, D(%rip)
            return e.short(0x74)                                               // je fallback
        }
        func fallback(_ number: UInt32) {
            e.emit([0xb8] + number.littleEndianBytes + [0x0f, 0x05, 0xc3])     // mov $n, %eax; syscall; ret
        }
        func split(by divisor: UInt32) {
            e.emit([0x31, 0xd2, 0xb9] + divisor.littleEndianBytes + [0x48, 0xf7, 0xf1])  // xor %edx,%edx; mov $d,%ecx; div %rcx
        }

        // clock_gettime(clockid_t, struct timespec *)
        entries.append(offset())
        var toFallback = [enabledCheck()]
        e.emit([0x83, 0xff, 0x07])                                             // cmp $7, %edi
        toFallback.append(e.short(0x77))                                       // ja fallback
        e.emit([0xb8, 0xf3, 0, 0, 0, 0x0f, 0xa3, 0xf8])                        // mov $0xf3, %eax; bt %edi, %eax
        toFallback.append(e.short(0x73))                                       // jnc fallback
        now()
        e.emit([0xb9, 0x21, 0, 0, 0, 0x0f, 0xa3, 0xf9])                        // mov $0x21, %ecx; bt %edi, %ecx
        let toRealtime = e.short(0x72)                                         // jc realtime
        e.ripRelative([0x48, 0x03, 0x05], data + DataLayout.monotonicBase)     // add D+16(%rip), %rax
        let toSplit = e.short(0xeb)                                            // jmp split
        e.land(toRealtime)
        e.ripRelative([0x48, 0x03, 0x05], data + DataLayout.realtimeBase)      // add D+24(%rip), %rax
        e.land(toSplit)
        split(by: 1_000_000_000)
        e.emit([0x48, 0x89, 0x06, 0x48, 0x89, 0x56, 0x08, 0x31, 0xc0, 0xc3])   // mov %rax,(%rsi); mov %rdx,8(%rsi); xor; ret
        toFallback.forEach { e.land($0) }
        fallback(228)

        // gettimeofday(struct timeval *, struct timezone *)
        entries.append(offset())
        toFallback = [enabledCheck()]
        e.emit([0x48, 0x85, 0xf6])                                             // test %rsi, %rsi
        toFallback.append(e.short(0x75))                                       // jne fallback
        e.emit([0x48, 0x85, 0xff])                                             // test %rdi, %rdi
        let toNothing = e.short(0x74)                                          // je done
        now()
        e.ripRelative([0x48, 0x03, 0x05], data + DataLayout.realtimeBase)      // add D+24(%rip), %rax
        split(by: 1000)
        split(by: 1_000_000)
        e.emit([0x48, 0x89, 0x07, 0x48, 0x89, 0x57, 0x08])                     // mov %rax,(%rdi); mov %rdx,8(%rdi)
        e.land(toNothing)
        e.emit([0x31, 0xc0, 0xc3])                                             // xor %eax, %eax; ret
        toFallback.forEach { e.land($0) }
        fallback(96)

        // time(time_t *)
        entries.append(offset())
        let timeFallback = enabledCheck()
        now()
        e.ripRelative([0x48, 0x03, 0x05], data + DataLayout.realtimeBase)      // add D+24(%rip), %rax
        split(by: 1_000_000_000)
        e.emit([0x48, 0x85, 0xff])                                             // test %rdi, %rdi
        let toReturn = e.short(0x74)                                           // je return
        e.emit([0x48, 0x89, 0x07])                                             // mov %rax, (%rdi)
        e.land(toReturn)
        e.emit([0xc3])                                                         // ret
        e.land(timeFallback)
        fallback(201)

        // getcpu(unsigned *cpu, unsigned *node, void *cache): one CPU, one node.
        entries.append(offset())
        e.emit([0x48, 0x85, 0xff, 0x74, 0x06, 0xc7, 0x07, 0, 0, 0, 0])         // test %rdi,%rdi; je +6; movl $0,(%rdi)
        e.emit([0x48, 0x85, 0xf6, 0x74, 0x06, 0xc7, 0x06, 0, 0, 0, 0])         // test %rsi,%rsi; je +6; movl $0,(%rsi)
        e.emit([0x31, 0xc0, 0xc3])                                             // xor %eax, %eax; ret
        return (e.bytes, entries)
    }
}
