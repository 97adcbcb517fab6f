import Foundation
import KVMSandbox

/// The reports `kvmsandbox run` prints for people and writes as JSON.
enum Report {
    /// The human-readable report of a run that did not end in a normal exit.
    static func text(_ outcome: RunOutcome) -> String {
        guard case .fault(let fault) = outcome else { return "kvmsandbox: guest \(outcome)" }
        var lines = ["kvmsandbox: guest fault: \(fault)"]
        let registers = fault.registers.named.map { name, value in
            pad(name, 7) + "0x" + String(value, radix: 16)
        }
        for row in stride(from: 0, to: registers.count, by: 3) {
            lines.append("  " + registers[row..<min(row + 3, registers.count)]
                .map { pad($0, 26) }.joined())
        }
        lines.append("backtrace:")
        for (index, frame) in fault.backtrace.frames.enumerated() {
            lines.append("  #\(pad(String(index), 3))\(frame)  [\(frame.foundBy.rawValue)]")
        }
        lines.append("  (\(fault.backtrace.end))")
        if let why = fault.backtrace.lineInfoUnavailable { lines.append("  no file:line: \(why)") }
        for other in fault.otherThreads {
            lines.append("thread \(other.thread):")
            for (index, frame) in other.backtrace.frames.enumerated() {
                lines.append("  #\(pad(String(index), 3))\(frame)  [\(frame.foundBy.rawValue)]")
            }
            lines.append("  (\(other.backtrace.end))")
        }
        return lines.joined(separator: "\n")
    }

    /// The JSON form of a run's outcome (schema in the README).
    /// `wallSeconds`: the run's wall-clock time, loading included.
    static func json(_ outcome: RunOutcome, sandbox: Sandbox, wallSeconds: Double) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var report = RunReport(outcome, sandbox: sandbox)
        report.version = kvmsandboxVersion
        report.schemaVersion = RunReport.currentSchemaVersion
        report.wallSeconds = wallSeconds
        return try encoder.encode(report)
    }
}

extension Report {
    /// Writes a report to `path`. A device or descriptor (`/dev/stdout`, `/proc/self/fd/N`) is
    /// written in place; any other path is replaced atomically, mode 0600, through a fresh
    /// temporary file, so a link a guest planted there (the path may lie in a `--rw` grant) is
    /// replaced, never followed by the host's write.
    static func write(_ bytes: [UInt8], to path: String) throws {
        if path.hasPrefix("/dev/") || path.hasPrefix("/proc/self/fd/") {
            try Data(bytes).write(to: URL(fileURLWithPath: path))
        } else {
            try replaceFile(path, with: bytes)
        }
    }
}

/// `text` padded with spaces to `width` characters.
func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}
