/// The first line of a `#!` script, as the kernel's `execve` reads it: the interpreter and the
/// optional argument (the rest of the line, as one argument), from at most the first 256 bytes.
package struct ScriptLine: Equatable {
    /// Linux's limit on nested interpreters (`BINPRM_MAX_RECURSION` is 4).
    package static let nestingLimit = 4

    /// The interpreter's path as written.
    package let interpreter: String
    /// The optional argument.
    package let argument: String?

    /// The `#!` line at the start of `bytes`, or nil for anything else (an ELF, an empty line).
    package init?(_ bytes: some Collection<UInt8>) {
        let head = Array(bytes.prefix(256))
        guard head.count > 2, head[0] == UInt8(ascii: "#"), head[1] == UInt8(ascii: "!") else { return nil }
        let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0d }
        var line = head[2...].prefix { $0 != 0x0a && $0 != 0 }[...]
        while let first = line.first, blank(first) { line = line.dropFirst() }
        while let last = line.last, blank(last) { line = line.dropLast() }
        guard !line.isEmpty else { return nil }
        let name = line.prefix { !blank($0) }
        var rest = line.dropFirst(name.count)
        while let first = rest.first, blank(first) { rest = rest.dropFirst() }
        interpreter = String(decoding: name, as: UTF8.self)
        argument = rest.isEmpty ? nil : String(decoding: rest, as: UTF8.self)
    }
}
