import Foundation
import Testing

/// The README's Swift snippets are the code `ReadmeSnippets.swift` compiles, word for word.
@Suite struct ReadmeSnippetTests {
    /// The package's root (this file is Tests/KVMSandboxTests/ReadmeSnippetTests.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The ```swift blocks of `markdown`, dedented by their fence's indentation, `import` lines left out.
    static func snippets(ofMarkdown markdown: String) -> [String] {
        var blocks: [String] = [], current: [String]? = nil, indent = ""
        for line in markdown.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if current == nil, trimmed == "```swift" {
                indent = String(line.prefix { $0 == " " || $0 == "\t" })
                current = []
            } else if let lines = current, trimmed == "```" {
                blocks.append(lines.filter { !$0.hasPrefix("import ") }.joined(separator: "\n"))
                current = nil
            } else if current != nil {
                current?.append(line.hasPrefix(indent) ? String(line.dropFirst(indent.count)) : line)
            }
        }
        return blocks
    }

    /// The snippets `ReadmeSnippets.swift` holds, in order, with their four spaces of indentation removed.
    static func compiledSnippets(_ source: String) -> [String] {
        var blocks: [String] = [], current: [String]? = nil
        for line in source.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("// README snippet ") { current = [] }
            else if trimmed == "// end", let lines = current { blocks.append(lines.joined(separator: "\n")); current = nil }
            else if current != nil { current?.append(line.hasPrefix("    ") ? String(line.dropFirst(4)) : line) }
        }
        return blocks
    }

    @Test func everyReadmeSnippetIsCompiled() throws {
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let source = try String(contentsOf: Self.root.appendingPathComponent("Tests/KVMSandboxTests/ReadmeSnippets.swift"), encoding: .utf8)
        let documented = Self.snippets(ofMarkdown: readme), compiled = Self.compiledSnippets(source)
        #expect(documented.count >= 6)
        #expect(documented.count == compiled.count, "README has \(documented.count) Swift snippets, ReadmeSnippets.swift \(compiled.count)")
        for (index, (text, code)) in zip(documented, compiled).enumerated() {
            #expect(text == code, "README snippet \(index + 1) differs from the compiled one")
        }
    }
}
