import CHost

/// What the guest learns about the CPU from the host at start-up (the auxiliary vector), read
/// from the host's own CPUID.
enum X86CPUIdentity {
    /// CPUID `leaf`/`subleaf` of the host CPU: (EAX, EBX, ECX, EDX).
    static func cpuid(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> (eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        var out: [UInt32] = [0, 0, 0, 0]
        out.withUnsafeMutableBufferPointer { chost_cpuid(leaf, subleaf, $0.baseAddress) }
        return (out[0], out[1], out[2], out[3])
    }

    /// AT_HWCAP on x86-64: CPUID.1:EDX, as Linux passes it.
    static let featureFlags: UInt32 = cpuid(1).edx

    /// The size of the XSAVE area for the features the host enabled (CPUID.0xD.0:EBX).
    static let xsaveSize: UInt64 = cpuid(0).eax >= 0xd ? UInt64(cpuid(0xd).ebx) : 512

    /// AT_MINSIGSTKSZ: the XSAVE area of the enabled features (CPUID.0xD.0:EBX) plus the rest of
    /// a signal frame, rounded up as Linux does (at least 2 KiB).
    static let minimumSignalStackSize: UInt64 = {
        let xsave = cpuid(0).eax >= 0xd ? UInt64(cpuid(0xd).ebx) : 512
        return max(2048, (xsave + 1024 + 63) & ~63)
    }()

    /// XSAVE components a guest may enable: x87, SSE, AVX, and AVX-512's opmask, ZMM_Hi256 and
    /// Hi16_ZMM. Not MPX (obsolete), PKRU (no protection keys here) or AMX (needs a permission).
    static let guestXSAVEComponents: UInt64 = 0b1110_0111

    /// What a guest is told and set up with: KVM's supported CPUID as it is, and, when XSAVE is
    /// there, CR4.OSXSAVE with XCR0 = the supported components of `guestXSAVEComponents`, so
    /// glibc's ifuncs, GCC's `__builtin_cpu_supports`, Go, numpy and V8 see one consistent CPU.
    ///
    /// `nativeCPUID`: the guest's `cpuid` runs on the host CPU (PVM), so it reports the host's
    /// XSAVE and AVX whatever KVM's supported CPUID says (PVM's leaf 1 lacks XSAVE): XSAVE is
    /// then the host's, and without CR4.OSXSAVE the guest saw OSXSAVE = 0 and chose SSE code.
    static func guestIdentity(supported: [CPUIDEntry], nativeCPUID: Bool) -> (cpuid: [CPUIDEntry], xcr0: UInt64?) {
        let supportedXSAVE = supported.first { $0.function == 1 }.map { $0.ecx & (1 << 26) != 0 } ?? false
        let hasXSAVE = supportedXSAVE || nativeCPUID && cpuid(1).ecx & (1 << 26) != 0
        guard hasXSAVE, let leaf = supported.first(where: { $0.function == 0xd && $0.index == 0 }) else { return (supported, nil) }
        let components = (UInt64(leaf.edx) << 32 | UInt64(leaf.eax)) & guestXSAVEComponents
        let xcr0 = components & 0b11 == 0b11 ? components : nil
        return (nativeCPUID ? withHostUserFeatures(supported, xcr0: xcr0 ?? 0) : supported, xcr0)
    }

    /// Under PVM the guest's code runs on the host CPU in user mode, so every user-mode
    /// instruction the host has works there, whatever KVM's supported CPUID leaves out (on this
    /// machine's PVM: LZCNT, without which numpy drops its AVX2 and AVX-512 paths and sorts equal
    /// keys in another order than natively). These bits are the host's, for user-mode instruction
    /// sets only (no PCID, PKU, TSX or anything a kernel must enable), the vector ones only where
    /// `xcr0` enables their state.
    static func withHostUserFeatures(_ table: [CPUIDEntry], xcr0: UInt64) -> [CPUIDEntry] {
        let avx: UInt32 = xcr0 & 0b110 == 0b110 ? ~0 : 0, avx512: UInt32 = xcr0 & 0xe6 == 0xe6 ? ~0 : 0
        // (leaf, subleaf, register index: 1 ebx, 2 ecx, 3 edx) -> the bits offered.
        let offered: [(UInt32, UInt32, Int, UInt32)] = [
            (1, 0, 2, 1 << 0 | 1 << 1 | 1 << 9 | 1 << 13 | 1 << 19 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 25 | 1 << 30
                | (xcr0 != 0 ? 1 << 26 : 0) | avx & (1 << 12 | 1 << 28 | 1 << 29)),                       // SSE3...RDRAND, FMA, AVX, F16C
            (7, 0, 1, 1 << 3 | 1 << 8 | 1 << 9 | 1 << 18 | 1 << 19 | 1 << 23 | 1 << 24 | 1 << 29 | avx & (1 << 5)
                | avx512 & (1 << 16 | 1 << 17 | 1 << 21 | 1 << 26 | 1 << 27 | 1 << 28 | 1 << 30 | 1 << 31)),  // BMI, ADX, SHA, AVX2, AVX-512
            (7, 0, 2, 1 << 8 | avx & (1 << 9 | 1 << 10) | avx512 & (1 << 1 | 1 << 6 | 1 << 11 | 1 << 12 | 1 << 14)),  // GFNI, VAES, VBMI...
            (7, 0, 3, 1 << 4 | avx512 & (1 << 8)),                                                             // FSRM, VP2INTERSECT
            (0x8000_0001, 0, 2, 1 << 0 | 1 << 5 | 1 << 6 | 1 << 8),                                            // LAHF, LZCNT, SSE4A, PREFETCHW
        ]
        return table.map { entry in
            var entry = entry
            for (leaf, subleaf, register, bits) in offered where entry.function == leaf && entry.index == subleaf {
                let host = cpuid(leaf, subleaf)
                switch register {
                case 1: entry.ebx |= host.ebx & bits
                case 2: entry.ecx |= host.ecx & bits
                default: entry.edx |= host.edx & bits
                }
            }
            return entry
        }
    }

    /// CR4.OSXSAVE: XGETBV/XSETBV and XSAVE-managed AVX state are usable.
    static let cr4OSXSAVE: UInt64 = 1 << 18
}
