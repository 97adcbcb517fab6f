import CKVM

/// How the state a snapshot holds is written to a snapshot file: KVM's C structs as their raw
/// bytes (checked for size when read back), everything else by the synthesized `Codable`.

/// A plain C struct (no pointers, no references) that snapshot files hold as its bytes, checked
/// for size when read back. Public only because the KVM structs it covers are; not for clients.
public protocol RawBytesCodable: Codable {
    init()
}

extension RawBytesCodable {
    public init(from decoder: any Decoder) throws {
        let bytes = try decoder.singleValueContainer().decode([UInt8].self)
        guard bytes.count == MemoryLayout<Self>.size else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                   debugDescription: "\(Self.self) of \(bytes.count) bytes, not \(MemoryLayout<Self>.size)"))
        }
        self.init()
        // SAFETY: `Self` is a C struct of plain integers, exactly `bytes.count` bytes long, so
        // any bit pattern is a valid value of it.
        withUnsafeMutableBytes(of: &self) { $0.copyBytes(from: bytes) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        // SAFETY: reading the bytes of a plain C struct.
        try container.encode(withUnsafeBytes(of: self) { Array($0) })
    }
}

extension kvm_regs: RawBytesCodable {}
extension kvm_sregs: RawBytesCodable {}
extension kvm_vcpu_events: RawBytesCodable {}
extension kvm_xsave: RawBytesCodable {}
extension kvm_fpu: RawBytesCodable {}
extension kvm_xcrs: RawBytesCodable {}
extension kvm_debugregs: RawBytesCodable {}

extension VCPUState: Codable {
    private enum CodingKeys: String, CodingKey {
        case registers, specialRegisters, events, floatingPoint, extendedControlRegisters, debugRegisters, msrIndices, msrValues
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        registers = try container.decode(kvm_regs.self, forKey: .registers)
        specialRegisters = try container.decode(kvm_sregs.self, forKey: .specialRegisters)
        events = try container.decode(kvm_vcpu_events.self, forKey: .events)
        floatingPoint = try container.decode(FloatingPointState.self, forKey: .floatingPoint)
        extendedControlRegisters = try container.decodeIfPresent(kvm_xcrs.self, forKey: .extendedControlRegisters)
        debugRegisters = try container.decodeIfPresent(kvm_debugregs.self, forKey: .debugRegisters)
        let indices = try container.decode([UInt32].self, forKey: .msrIndices)
        let values = try container.decode([UInt64].self, forKey: .msrValues)
        guard indices.count == values.count, indices.count <= 64 else {
            throw DecodingError.dataCorruptedError(forKey: .msrValues, in: container, debugDescription: "MSR lists differ")
        }
        msrs = zip(indices, values).map { (index: $0, value: $1) }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(registers, forKey: .registers)
        try container.encode(specialRegisters, forKey: .specialRegisters)
        try container.encode(events, forKey: .events)
        try container.encode(floatingPoint, forKey: .floatingPoint)
        try container.encodeIfPresent(extendedControlRegisters, forKey: .extendedControlRegisters)
        try container.encodeIfPresent(debugRegisters, forKey: .debugRegisters)
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
