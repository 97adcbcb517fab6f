import KVMSandbox

/// The human-readable report of a run that did not end in a normal exit.
enum Report {
    static func text(_ outcome: RunOutcome) -> String {
        guard case .fault(let fault) = outcome else { return "kvmsandbox: guest \(outcome)" }
        var lines = ["kvmsandbox: guest fault: \(fault)"]
        let registers = fault.registers.named.map { name, value in
            pad(name, 6) + "0x" + String(value, radix: 16)
        }
        for row in stride(from: 0, to: registers.count, by: 3) {
            lines.append("  " + registers[row..<min(row + 3, registers.count)]
                .map { pad($0, 26) }.joined())
        }
        return lines.joined(separator: "\n")
    }
}

/// `text` padded with spaces to `width` characters.
func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}
