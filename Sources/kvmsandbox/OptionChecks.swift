import ArgumentParser

/// Range checks for numeric options, so that no value a user types can wrap or trap: every
/// size is converted with overflow-checked arithmetic and every count must be in range.
enum OptionChecks {
    /// `value` MiB in bytes, or a validation error naming `option`.
    static func mebibytes(_ value: UInt64, option: String) throws -> UInt64 {
        try scaled(value, shift: 20, unit: "MiB", option: option)
    }

    /// `value` KiB in bytes, or a validation error naming `option`.
    static func kibibytes(_ value: UInt64, option: String) throws -> UInt64 {
        try scaled(value, shift: 10, unit: "KiB", option: option)
    }

    private static func scaled(_ value: UInt64, shift: UInt64, unit: String, option: String) throws -> UInt64 {
        let (bytes, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow, bytes > 0 else { throw ValidationError("\(option) \(value) \(unit) is out of range") }
        return bytes
    }

    /// Checks that `value` lies in `range`.
    static func count<T: BinaryInteger>(_ value: T, in range: ClosedRange<T>, option: String) throws {
        guard range.contains(value) else { throw ValidationError("\(option) must be between \(range.lowerBound) and \(range.upperBound), not \(value)") }
    }

    /// Checks a timeout in seconds: positive, finite, at most a year.
    static func timeout(_ value: Double?) throws {
        guard let value else { return }
        guard value > 0, value <= 365 * 86_400 else { throw ValidationError("--timeout must be a positive number of seconds (at most a year), not \(value)") }
    }

    /// Bytes of a size such as `65536`, `64K`, `16M` or `1G` (binary units), or nil for
    /// anything else or a size past 1 TiB.
    static func size(_ text: String) -> Int? {
        let shifts: [Character: Int] = ["k": 10, "K": 10, "m": 20, "M": 20, "g": 30, "G": 30]
        var digits = Substring(text), shift = 0
        if let last = text.last, let unit = shifts[last] { digits = text.dropLast(); shift = unit }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let value = Int(digits), value >= 0, value <= (1 << 40) >> shift else { return nil }
        return value << shift
    }
}
