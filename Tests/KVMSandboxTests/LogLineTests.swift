import Foundation
import KVMSandboxTools
import Logging
import Synchronization
import Testing
@testable import KVMSandboxServer

/// `serve`'s log lines, request ids and metrics text (no VM needed): what a guest or a client
/// controls never breaks a line or forges a field.
@Suite struct LogLines {
    /// Text lines lead with the access fields; hostile values (spaces, quotes, newlines,
    /// escape sequences) are quoted and escaped, so one event is always one line.
    @Test func textLinesQuoteWhatAGuestWrote() {
        let line = LineLogHandler.line(format: .text, time: "T", level: .info, label: "kvmsandbox.serve", message: "guest stderr",
                                       metadata: ["line": "evil\nstatus=200 \u{1b}[2J\"", "id": "abc", "status": .stringConvertible(500)])
        #expect(line == "T info kvmsandbox.serve: guest stderr id=abc status=500 line=\"evil\\nstatus=200 \\u001b[2J\\\"\"\n")
        #expect(line.filter { $0 == "\n" }.count == 1)
    }

    /// JSON lines are one object per line: numbers stay numbers, strings are escaped, and
    /// metadata cannot overwrite the fixed fields.
    @Test func jsonLinesAreOneObjectEach() throws {
        let line = LineLogHandler.line(format: .json, time: "T", level: .warning, label: "l", message: "m\u{0}",
                                       metadata: ["exits": .stringConvertible(7), "ms": .stringConvertible(1.5), "level": "forged",
                                                  "text": "a\"b\\c\n"])
        #expect(line == "{\"time\":\"T\",\"level\":\"warning\",\"logger\":\"l\",\"message\":\"m\\u0000\",\"exits\":7,\"ms\":1.5,\"text\":\"a\\\"b\\\\c\\n\"}\n")
    }

    /// A client's `X-Request-Id` is kept only when it is a plain token of at most 64 characters.
    @Test func requestIdsAreTokens() {
        #expect(RequestLog.id(offered: "req-1.A_b") == "req-1.A_b")
        for hostile in ["", "a b", "x\ny", "id=1", String(repeating: "a", count: 65), "é"] {
            let id = RequestLog.id(offered: hostile)
            #expect(id != hostile && id.count == 16 && id.allSatisfy(\.isHexDigit))
        }
    }

    /// Guest stderr is logged as its last lines within the bounds, with what was left out.
    @Test func guestOutputIsBounded() {
        let lines = (0..<1000).map { "line \($0)" }.joined(separator: "\n")
        let handler = Recorded()
        RequestLog.guestOutput(Array(lines.utf8), id: "r", logger: Logger(label: "t") { _ in handler })
        let logged = handler.store.lines.withLock { $0 }
        #expect(logged.count == RequestLog.maximumGuestLines + 1)
        #expect(logged.first?.contains("omitted_bytes") == true)
        #expect(logged.last?.hasSuffix("line=\"line 999\"\n") == true)
    }

    /// `# HELP` lines go before the `# TYPE` line of each described metric; nothing else changes.
    @Test func helpLinesArePlacedBeforeTypes() {
        let exposition = Array("# TYPE a counter\na 1\n# TYPE b gauge\nb 2\n".utf8)
        let out = MetricsEndpoint.addingHelp(["a": "The a."], to: exposition)
        #expect(String(decoding: out, as: UTF8.self) == "# HELP a The a.\n# TYPE a counter\na 1\n# TYPE b gauge\nb 2\n")
    }
}

/// A log handler that keeps its text lines.
private struct Recorded: LogHandler {
    /// The lines, shared by the handler's copies.
    final class Store: Sendable { let lines = Mutex<[String]>([]) }
    let store = Store()
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let line = LineLogHandler.line(format: .text, time: "T", level: event.level, label: "t", message: event.message.description,
                                       metadata: event.metadata ?? [:])
        store.lines.withLock { $0.append(line) }
    }
}

/// The SDK header built into the binary (`SDKHeader`) is the repository's, byte for byte.
@Suite struct EmbeddedSDK {
    /// Edit `Guest/include/kvmsandbox.h`, then run `Scripts/embed-sdk-header`; this fails in between.
    @Test func embeddedSDKHeaderMatchesTheFile() throws {
        let file = Guests.repository.appendingPathComponent("Guest/include/kvmsandbox.h").path
        let bytes = try #require(FileManager.default.contents(atPath: file))
        #expect(Array(SDKHeader.text.utf8) == Array(bytes), "run Scripts/embed-sdk-header")
    }
}
