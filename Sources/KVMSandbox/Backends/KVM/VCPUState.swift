import CKVM

/// Everything of a vCPU that a snapshot holds and a fork or reset puts back, as KVM reports it
/// (after Firecracker's `VcpuState` and Hyperlight's `reset_vcpu`): the general and special
/// registers, exception and interrupt state, the x87/SSE/AVX state (the XSAVE area, or
/// `kvm_fpu` where KVM lacks `KVM_CAP_XSAVE`), the extended control registers (XCR0), the debug
/// registers and the model-specific registers in `VCPUState.savedMSRs` this KVM can read.
struct VCPUState {
    var registers: kvm_regs
    var specialRegisters: kvm_sregs
    var events: kvm_vcpu_events
    var floatingPoint: FloatingPointState
    /// nil where KVM lacks `KVM_CAP_XCRS`.
    var extendedControlRegisters: kvm_xcrs?
    /// nil where KVM lacks `KVM_CAP_DEBUGREGS`.
    var debugRegisters: kvm_debugregs?
    var msrs: [(index: UInt32, value: UInt64)]

    /// XCR0 (the enabled XSAVE components), where KVM reports the XCRs.
    var xcr0: UInt64? {
        guard var xcrs = extendedControlRegisters else { return nil }
        let count = Int(min(xcrs.nr_xcrs, UInt32(KVM_MAX_XCRS)))
        return withUnsafeBytes(of: &xcrs.xcrs) { raw in
            raw.bindMemory(to: kvm_xcr.self).prefix(count).first(where: { $0.xcr == 0 })?.value
        }
    }

    /// The MSRs a snapshot saves: the `syscall` MSRs, the swapgs base, PAT and the SYSENTER MSRs.
    /// A CPL 3 guest can write none of them (`wrmsr` is #GP), so a reset need not restore them;
    /// the paranoid check (`Sandbox.verifyReset`) still compares them.
    static let savedMSRs: [UInt32] = [
        0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084,  // STAR, LSTAR, CSTAR, SFMASK
        0xc000_0102,                                          // KERNEL_GS_BASE
        0x277,                                                // PAT
        0x174, 0x175, 0x176,                                  // SYSENTER_CS/ESP/EIP
    ]
}

/// The floating-point and vector state of a vCPU.
enum FloatingPointState: Codable {
    /// `KVM_GET_XSAVE`: the 4 KiB XSAVE area (x87, SSE, AVX and whatever XCR0 enables).
    case xsave(RawBytes<kvm_xsave>)
    /// `KVM_GET_FPU`: x87 and SSE only.
    case fpu(RawBytes<kvm_fpu>)
}

/// What differs between two vCPU states, by component name ("registers", "fpu/xsave", "msr 0x277", ...).
func differences(between a: VCPUState, and b: VCPUState) -> [String] {
    var result: [String] = []
    func compare<T>(_ name: String, _ x: T, _ y: T) {
        if !bytesEqual(x, y) { result.append(name) }
    }
    compare("general-purpose registers", a.registers, b.registers)
    compare("special registers", a.specialRegisters, b.specialRegisters)
    if !bytesEqual(a.events, b.events) { result.append("exception and interrupt state (\(eventDifferences(a.events, b.events)))") }
    switch (a.floatingPoint, b.floatingPoint) {
    case (.xsave(let x), .xsave(let y)): compare("x87/SSE/AVX state (XSAVE area)", x.value, y.value)
    case (.fpu(let x), .fpu(let y)): compare("x87/SSE state", x.value, y.value)
    default: result.append("floating-point state kinds")
    }
    if let x = a.extendedControlRegisters, let y = b.extendedControlRegisters { compare("XCRs", x, y) }
    if let x = a.debugRegisters, let y = b.debugRegisters { compare("debug registers", x, y) }
    let left = Dictionary(a.msrs.map { ($0.index, $0.value) }, uniquingKeysWith: { first, _ in first })
    let right = Dictionary(b.msrs.map { ($0.index, $0.value) }, uniquingKeysWith: { first, _ in first })
    for index in Set(left.keys).union(right.keys).sorted() where left[index] != right[index] {
        result.append("MSR 0x\(String(index, radix: 16))")
    }
    return result
}

/// The fields of two `kvm_vcpu_events` that differ, as "name a -> b".
private func eventDifferences(_ a: kvm_vcpu_events, _ b: kvm_vcpu_events) -> String {
    let fields: [(String, (kvm_vcpu_events) -> UInt64)] = [
        ("exception.injected", { UInt64($0.exception.injected) }), ("exception.nr", { UInt64($0.exception.nr) }),
        ("exception.has_error_code", { UInt64($0.exception.has_error_code) }), ("exception.pending", { UInt64($0.exception.pending) }),
        ("exception.error_code", { UInt64($0.exception.error_code) }), ("interrupt.injected", { UInt64($0.interrupt.injected) }),
        ("interrupt.nr", { UInt64($0.interrupt.nr) }), ("interrupt.soft", { UInt64($0.interrupt.soft) }),
        ("interrupt.shadow", { UInt64($0.interrupt.shadow) }), ("nmi.injected", { UInt64($0.nmi.injected) }),
        ("nmi.pending", { UInt64($0.nmi.pending) }), ("nmi.masked", { UInt64($0.nmi.masked) }),
        ("sipi_vector", { UInt64($0.sipi_vector) }), ("flags", { UInt64($0.flags) }), ("smi.smm", { UInt64($0.smi.smm) }),
        ("triple_fault.pending", { UInt64($0.triple_fault.pending) }),
        ("exception_has_payload", { UInt64($0.exception_has_payload) }), ("exception_payload", { $0.exception_payload }),
    ]
    let named = fields.filter { $0.1(a) != $0.1(b) }.map { "\($0.0) \($0.1(a)) -> \($0.1(b))" }
    return named.isEmpty ? "reserved bytes" : named.joined(separator: ", ")
}

/// Whether two values of a C struct have the same bytes.
private func bytesEqual<T>(_ a: T, _ b: T) -> Bool {
    withUnsafeBytes(of: a) { x in withUnsafeBytes(of: b) { y in x.elementsEqual(y) } }
}

extension FloatingPointState {
    /// The first `size` bytes of the XSAVE area, as a signal frame shows it to the guest (at
    /// least the 576-byte legacy area and header, at most the 4 KiB KVM saves); empty for
    /// `kvm_fpu` state, which has no XSAVE layout.
    func xsaveArea(size: UInt64) -> [UInt8] {
        guard case .xsave(let saved) = self else { return [] }
        var area = saved.value
        let size = Int(min(4096, max(576, size)))
        return withUnsafeBytes(of: &area.region) { Array($0.prefix(size)) }
    }
}
