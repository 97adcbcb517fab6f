import CKVM

/// What the guest learns about the CPU from the host at start-up (the auxiliary vector), read
/// from the host's own CPUID.
enum X86CPUIdentity {
    /// CPUID `leaf`/`subleaf` of the host CPU: (EAX, EBX, ECX, EDX).
    static func cpuid(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> (eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        var out: [UInt32] = [0, 0, 0, 0]
        out.withUnsafeMutableBufferPointer { ckvm_cpuid(leaf, subleaf, $0.baseAddress) }
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
    static func guestIdentity(supported: [kvm_cpuid_entry2], nativeCPUID: Bool) -> (cpuid: [kvm_cpuid_entry2], xcr0: UInt64?) {
        let supportedXSAVE = supported.first { $0.function == 1 }.map { $0.ecx & (1 << 26) != 0 } ?? false
        let hasXSAVE = supportedXSAVE || nativeCPUID && cpuid(1).ecx & (1 << 26) != 0
        guard hasXSAVE, let leaf = supported.first(where: { $0.function == 0xd && $0.index == 0 }) else { return (supported, nil) }
        let components = (UInt64(leaf.edx) << 32 | UInt64(leaf.eax)) & guestXSAVEComponents
        return (supported, components & 0b11 == 0b11 ? components : nil)
    }

    /// CR4.OSXSAVE: XGETBV/XSETBV and XSAVE-managed AVX state are usable.
    static let cr4OSXSAVE: UInt64 = 1 << 18
}
