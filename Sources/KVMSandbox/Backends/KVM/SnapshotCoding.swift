import CKVM

/// How the state a snapshot holds is written to a snapshot file: KVM's C structs as their raw
/// bytes (checked for size when read back), everything else by the synthesized `Codable`.

/// A plain C struct (no pointers, no references), zero when made with `init()`.
protocol PlainCStruct {
    init()
}

/// A plain C struct as a snapshot file holds it: its bytes, checked for size when read back.
/// (A wrapper rather than a conformance of KVM's structs to `Codable`, which would be public API.)
struct RawBytes<Value: PlainCStruct>: Codable {
    var value: Value

    init(_ value: Value) { self.value = value }

    init(from decoder: any Decoder) throws {
        let bytes = try decoder.singleValueContainer().decode([UInt8].self)
        guard bytes.count == MemoryLayout<Value>.size else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                   debugDescription: "\(Value.self) of \(bytes.count) bytes, not \(MemoryLayout<Value>.size)"))
        }
        var value = Value()
        // SAFETY: `Value` is a C struct of plain integers, exactly `bytes.count` bytes long, so
        // any bit pattern is a valid value of it.
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: bytes) }
        self.value = value
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        // SAFETY: reading the bytes of a plain C struct.
        try container.encode(withUnsafeBytes(of: value) { Array($0) })
    }
}

extension kvm_regs: PlainCStruct {}
extension kvm_sregs: PlainCStruct {}
extension kvm_vcpu_events: PlainCStruct {}
extension kvm_xsave: PlainCStruct {}
extension kvm_fpu: PlainCStruct {}
extension kvm_xcrs: PlainCStruct {}
extension kvm_debugregs: PlainCStruct {}

extension VCPUState: Codable {
    private enum CodingKeys: String, CodingKey {
        case registers, specialRegisters, events, floatingPoint, extendedControlRegisters, debugRegisters, msrIndices, msrValues
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        registers = try container.decode(RawBytes<kvm_regs>.self, forKey: .registers).value
        specialRegisters = try container.decode(RawBytes<kvm_sregs>.self, forKey: .specialRegisters).value
        events = try container.decode(RawBytes<kvm_vcpu_events>.self, forKey: .events).value
        floatingPoint = try container.decode(FloatingPointState.self, forKey: .floatingPoint)
        extendedControlRegisters = try container.decodeIfPresent(RawBytes<kvm_xcrs>.self, forKey: .extendedControlRegisters)?.value
        debugRegisters = try container.decodeIfPresent(RawBytes<kvm_debugregs>.self, forKey: .debugRegisters)?.value
        let indices = try container.decode([UInt32].self, forKey: .msrIndices)
        let values = try container.decode([UInt64].self, forKey: .msrValues)
        guard indices.count == values.count, indices.count <= 64 else {
            throw DecodingError.dataCorruptedError(forKey: .msrValues, in: container, debugDescription: "MSR lists differ")
        }
        msrs = zip(indices, values).map { (index: $0, value: $1) }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(RawBytes(registers), forKey: .registers)
        try container.encode(RawBytes(specialRegisters), forKey: .specialRegisters)
        try container.encode(RawBytes(events), forKey: .events)
        try container.encode(floatingPoint, forKey: .floatingPoint)
        try container.encodeIfPresent(extendedControlRegisters.map(RawBytes.init), forKey: .extendedControlRegisters)
        try container.encodeIfPresent(debugRegisters.map(RawBytes.init), forKey: .debugRegisters)
        try container.encode(msrs.map(\.index), forKey: .msrIndices)
        try container.encode(msrs.map(\.value), forKey: .msrValues)
    }
}

/// A host file a snapshot cannot carry to another process (an open file, a connection): writing
/// a snapshot that holds one fails (`SnapshotFileError.openHostFile` names it first).
extension HostFile: Codable {
    convenience init(from decoder: any Decoder) throws {
        throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "a snapshot file holds no host file"))
    }

    func encode(to encoder: any Encoder) throws {
        throw EncodingError.invalidValue(fd, .init(codingPath: encoder.codingPath, debugDescription: "an open host file cannot be saved"))
    }
}
