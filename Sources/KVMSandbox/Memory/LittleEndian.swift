/// x86 and guest memory store integers least significant byte first; these convert between an
/// integer and its bytes in that order.
extension FixedWidthInteger {
    /// The value's bytes, least significant first.
    var littleEndianBytes: [UInt8] { withUnsafeBytes(of: littleEndian, Array.init) }

    /// The value whose bytes, least significant first, are `bytes` (as many as the type holds).
    init<Bytes: Collection<UInt8>>(littleEndianBytes bytes: Bytes) {
        self = bytes.reversed().reduce(Self.zero) { ($0 << 8) | Self(truncatingIfNeeded: $1) }
    }
}

extension Array where Element == UInt8 {
    /// The bytes of `words`, each least significant byte first.
    init(littleEndianWords words: [UInt64]) { self = words.flatMap(\.littleEndianBytes) }
}
