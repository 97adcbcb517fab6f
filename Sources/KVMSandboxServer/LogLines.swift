import Foundation
import Logging

/// How `kvmsandbox serve` writes its log: one line per event on stderr, as text for people or
/// as one JSON object per line for a log pipeline (`--log-format json`).
public enum LogFormat: String, Sendable, CaseIterable {
    /// `2026-12-07T14:01:02.345Z info kvmsandbox.serve: request id=... status=200`
    case text
    /// `{"time":"...","level":"info","logger":"kvmsandbox.serve","message":"request","id":"...","status":200}`
    case json
}

/// A swift-log handler writing `LogFormat` lines to a file descriptor (stderr by default). Lines
/// from many threads never interleave: each is formatted first, then written with one `write`.
public struct LineLogHandler: LogHandler {
    /// The format of every line.
    public let format: LogFormat
    /// Lines below this level are dropped.
    public var logLevel: Logger.Level
    /// Metadata added to every line of this logger.
    public var metadata: Logger.Metadata = [:]
    /// Task-local or constant metadata added when a line is written.
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let descriptor: Int32

    /// A handler for the logger `label`, writing `format` lines of `level` and above to `descriptor`.
    public init(label: String, format: LogFormat, level: Logger.Level, descriptor: Int32 = 2) {
        (self.label, self.format, self.logLevel, self.descriptor) = (label, format, level, descriptor)
    }

    /// Makes every `Logger` of this process write `format` lines of `level` and above to stderr.
    /// Call once, before the first logger is created (swift-log allows one bootstrap).
    public static func bootstrap(format: LogFormat, level: Logger.Level) {
        LoggingSystem.bootstrap { label in LineLogHandler(label: label, format: format, level: level) }
    }

    /// Reads and changes one metadata value of this logger.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Formats `event` as one line and writes it.
    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        if let error = event.error { merged["error"] = "\(error)" }
        let line = Self.line(format: format, time: Self.now(), level: event.level, label: label,
                             message: event.message.description, metadata: merged)
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written > 0 { offset += written } else if written < 0 && errno == EINTR { continue } else { break }
            }
        }
    }

    /// One line (with its newline) of `format`. Metadata keys are sorted (`leadingKeys` first),
    /// so lines of one kind always list their fields in the same order; integers and decimals
    /// stay numbers in JSON.
    public static func line(format: LogFormat, time: String, level: Logger.Level, label: String, message: String,
                            metadata: Logger.Metadata) -> String {
        let fields = metadata.sorted { (order($0.key), $0.key) < (order($1.key), $1.key) }
        switch format {
        case .text:
            var line = "\(time) \(level) \(label): \(message)"
            for (key, value) in fields { line += " \(key)=\(textValue(value))" }
            return line + "\n"
        case .json:
            var line = "{\"time\":\(jsonString(time)),\"level\":\(jsonString("\(level)")),\"logger\":\(jsonString(label)),"
                + "\"message\":\(jsonString(message))"
            for (key, value) in fields where !["time", "level", "logger", "message"].contains(key) {
                line += ",\(jsonString(key)):\(jsonValue(value))"
            }
            return line + "}\n"
        }
    }

    /// Fields that lead a line when present (an access line reads id, method, path, status first).
    static let leadingKeys = ["id", "method", "path", "status", "peer", "outcome"]

    /// Where `key` sorts: leading keys by their place, every other key after them.
    static func order(_ key: String) -> Int { leadingKeys.firstIndex(of: key) ?? leadingKeys.count }

    /// A text value: as is when it has no spaces, quotes or line breaks, else quoted with escapes.
    static func textValue(_ value: Logger.Metadata.Value) -> String {
        let text = "\(value)"
        let plain = !text.isEmpty && !text.unicodeScalars.contains {
            $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\\" || $0.value < 0x20 || (0x7f...0x9f).contains($0.value)
        }
        guard !plain else { return text }
        return jsonString(text)
    }

    /// A JSON value: numbers as numbers, lists and dictionaries as arrays and objects, the
    /// rest as strings.
    static func jsonValue(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return jsonString(text)
        case .stringConvertible(let convertible):
            if convertible is any BinaryInteger { return "\(convertible)" }
            if let number = convertible as? Double, number.isFinite { return "\(number)" }
            if let flag = convertible as? Bool { return flag ? "true" : "false" }
            return jsonString("\(convertible)")
        case .array(let values): return "[" + values.map(jsonValue).joined(separator: ",") + "]"
        case .dictionary(let values):
            return "{" + values.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonValue($0.value))" }.joined(separator: ",") + "}"
        }
    }

    /// `text` as a JSON string: quotes, backslashes and control characters escaped.
    static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7f:
                out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// The time now in UTC, ISO 8601 with milliseconds.
    static func now() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        var seconds = spec.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), spec.tv_nsec / 1_000_000)
    }
}
