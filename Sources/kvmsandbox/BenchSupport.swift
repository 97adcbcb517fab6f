import Foundation
import KVMSandbox
import KVMSandboxTools

/// Timing samples of one figure: the median is reported, the p99 beside it where it matters.
struct Samples {
    private(set) var values: [Double]

    init(_ values: [Double]) { self.values = values.sorted() }

    /// Times `count` runs of `body`, one sample each.
    static func measure(_ count: Int, _ body: () throws -> Void) rethrows -> Samples {
        Samples(try (0..<count).map { _ in try timed(body) })
    }

    var median: Double { values[values.count / 2] }
    var p99: Double { values[min(values.count - 1, Int(Double(values.count) * 0.99))] }
}

/// Nanoseconds `body` took.
func timed(_ body: () throws -> Void) rethrows -> Double {
    let start = monotonicNanoseconds()
    try body()
    return Double(monotonicNanoseconds() - start)
}

func median(_ values: [Double]) -> Double { Samples(values).median }

/// Writes `source` to `work/name.c` and builds it with gcc as a static glibc program (the same
/// binary then runs in the sandbox and natively); its path, or nil when gcc failed, after
/// recording why under `skipKey`.
func staticBenchProgram(_ name: String, source: String, work: URL, results: inout BenchResults, skipKey: String) throws -> String? {
    let sourceFile = work.appendingPathComponent("\(name).c")
    let binary = work.appendingPathComponent(name).path
    try Data(source.utf8).write(to: sourceFile)
    guard GuestToolchain.spawn(["gcc", "-static", "-O2", "-o", binary, sourceFile.path], discardingOutput: true) == 0 else {
        results.skip(skipKey, "gcc -static failed (glibc's static libraries: Scripts/setup)")
        return nil
    }
    return binary
}

/// The benchmark's results, in the order measured.
struct BenchResults {
    private(set) var entries: [(key: String, value: Double)] = []
    /// Figures that could not be measured here, and why.
    private(set) var skipped: [(key: String, why: String)] = []

    mutating func add(_ key: String, _ value: Double) { entries.append((key, value)) }

    /// Adds `key` (the median) and `key` with `_p99` before its `_ns` suffix.
    mutating func add(_ key: String, _ samples: Samples) {
        add(key, samples.median)
        add(key.replacingOccurrences(of: "_ns", with: "_p99_ns"), samples.p99)
    }

    mutating func skip(_ key: String, _ why: String) { skipped.append((key, why)) }

    subscript(key: String) -> Double? { entries.first { $0.key == key }?.value }

    /// One JSON object: numbers, then `skipped` with the reasons.
    func json(platform: String) -> String {
        var fields = ["\"platform\": \"\(platform)\""]
        fields += entries.map { "\"\($0.key)\": \(String(format: "%.3f", $0.value))" }
        let reasons = skipped.map { "\"\($0.key)\": \"\($0.why.replacingOccurrences(of: "\"", with: "'"))\"" }
        fields.append("\"skipped\": {\(reasons.joined(separator: ", "))}")
        return "{" + fields.joined(separator: ", ") + "}"
    }

    /// A table for people: ratios with three decimals, times in ns.
    func table() -> String {
        var lines = entries.map { entry in
            pad(entry.key, 34) + (entry.key.hasSuffix("_ns") || entry.key.hasSuffix("_bytes")
                ? String(format: "%14.0f", entry.value) : String(format: "%14.3f", entry.value))
        }
        lines += skipped.map { pad($0.key, 34) + "      skipped: \($0.why)" }
        return lines.joined(separator: "\n")
    }
}
