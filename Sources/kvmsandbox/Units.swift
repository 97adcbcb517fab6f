import ArgumentParser

/// A size in MiB typed on the command line: a plain number is MiB (`--memory 512`), or a
/// number with a binary unit: `512M`, `2G`, `1T`, `4096K` (whole MiB only). Never wraps: past
/// 1 TiB (or a fraction of a MiB) the value is refused as a usage error.
struct Mebibytes: ExpressibleByArgument, ExpressibleByIntegerLiteral, CustomStringConvertible, Equatable, Sendable {
    /// The size in MiB.
    let count: UInt64

    /// `count` MiB.
    init(integerLiteral count: UInt64) { self.count = count }

    /// Parses `512`, `512M`, `2G`, `1T` or `4096K` (case-insensitive units, optional `iB`/`B`).
    init?(argument: String) {
        var text = Substring(argument.lowercased())
        for suffix in ["ib", "b"] where text.hasSuffix(suffix) && text.count > suffix.count + 1 { text = text.dropLast(suffix.count); break }
        var multiplier: UInt64 = 1, divisor: UInt64 = 1
        switch text.last {
        case "k": divisor = 1024; text = text.dropLast()
        case "m": text = text.dropLast()
        case "g": multiplier = 1024; text = text.dropLast()
        case "t": multiplier = 1024 * 1024; text = text.dropLast()
        default: break
        }
        guard !text.isEmpty, text.allSatisfy({ $0.isASCII && $0.isNumber }), let value = UInt64(text), value <= 1 << 40,
              value % divisor == 0 else { return nil }
        let (scaled, overflow) = (value / divisor).multipliedReportingOverflow(by: multiplier)
        guard !overflow, scaled <= 1 << 20 else { return nil }  // 1 TiB
        count = scaled
    }

    /// `N` (MiB), as the option prints it in messages.
    var description: String { "\(count)" }
}

/// A duration typed on the command line: a plain number is seconds (`--timeout 2.5`), or a
/// number with a unit: `500ms`, `10s`, `2m`, `1h`. Read even when it starts with `-`, so
/// `--timeout -1` is refused for what it is (not positive) rather than as a missing value.
struct Seconds: ExpressibleByArgument, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, CustomStringConvertible, Equatable, Sendable {
    /// The duration in seconds (may be negative or zero as typed: the option's check refuses it).
    let value: Double

    /// `value` seconds.
    init(integerLiteral value: Int) { self.value = Double(value) }
    /// `value` seconds.
    init(floatLiteral value: Double) { self.value = value }

    /// Parses `2.5`, `500ms`, `10s`, `2m` or `1h`.
    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        var text = Substring(argument), scale = 1.0
        for (suffix, factor) in units where text.hasSuffix(suffix) { text = text.dropLast(suffix.count); scale = factor; break }
        guard !text.isEmpty, text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == "." || $0 == "-" || $0 == "+") }),
              let number = Double(text), number.isFinite else { return nil }
        value = number * scale
    }

    /// The seconds, as messages print them.
    var description: String { "\(value)" }
}
