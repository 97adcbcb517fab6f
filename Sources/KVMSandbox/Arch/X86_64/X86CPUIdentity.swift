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

    /// AT_MINSIGSTKSZ: the XSAVE area of the enabled features (CPUID.0xD.0:EBX) plus the rest of
    /// a signal frame, rounded up as Linux does (at least 2 KiB).
    static let minimumSignalStackSize: UInt64 = {
        let xsave = cpuid(0).eax >= 0xd ? UInt64(cpuid(0xd).ebx) : 512
        return max(2048, (xsave + 1024 + 63) & ~63)
    }()
}
