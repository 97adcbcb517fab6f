import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import KVMSandbox
import Logging

/// What a server writes per request or connection: an id, one access line, and the guest's
/// stderr as bounded log lines of its own.
enum RequestLog {
    /// A client's `X-Request-Id` when it is 1-64 characters of letters, digits, `.`, `_` and
    /// `-` (anything else could forge log fields); otherwise a new random one (16 hex digits).
    static func id(offered: String?) -> String {
        if let offered, (1...64).contains(offered.utf8.count),
           offered.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d }) {
            return offered
        }
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Guest stderr logged per request: at most this many bytes (its end) ...
    static let maximumGuestBytes = 4096
    /// ... in at most this many lines.
    static let maximumGuestLines = 20

    /// Logs what the guest wrote to stderr for request `id`: its last `maximumGuestLines`
    /// lines within `maximumGuestBytes`, one log line each (label `guest`), and how much was left out.
    static func guestOutput(_ bytes: [UInt8], id: String, logger: Logger) {
        guard !bytes.isEmpty else { return }
        let tail = bytes.suffix(maximumGuestBytes)
        var lines = String(decoding: tail, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        var omitted = bytes.count - tail.count
        if lines.count > maximumGuestLines {
            omitted += lines.dropLast(maximumGuestLines).reduce(0) { $0 + $1.utf8.count + 1 }
            lines = Array(lines.suffix(maximumGuestLines))
        }
        if omitted > 0 { logger.info("guest stderr", metadata: ["id": "\(id)", "omitted_bytes": "\(omitted)"]) }
        for line in lines { logger.info("guest stderr", metadata: ["id": "\(id)", "line": "\(line)"]) }
    }

    /// Why a request got a 500 or 504, in a few words for the client (`X-KVMSandbox-Reason`).
    static func reason(_ outcome: RunOutcome) -> String {
        switch outcome {
        case .exited(let status): return "the program exited with status \(status)"
        case .timedOut(let seconds, _): return "timed out after \(seconds) s"
        case .fault: return "the program crashed (signal \(outcome.exitStatus &- 128))"  // no addresses: the client may be hostile
        case .signaled(let signal): return "the program was killed by signal \(signal)"
        case .ready: return "the program waited for more input instead of exiting"
        default: return "the program failed (status \(outcome.exitStatus))"
        }
    }

    /// The address at the other end of the connected socket `descriptor` ("ADDRESS:PORT"), or
    /// "unknown".
    static func peer(of descriptor: Int32) -> String {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let found = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(descriptor, $0, &length) }
        }
        guard found == 0 else { return "unknown" }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                    var bytes = address.pointee.sin_addr
                    guard inet_ntop(AF_INET, &bytes, &text, socklen_t(text.count)) != nil else { return "unknown" }
                    return "\(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)):\(UInt16(bigEndian: address.pointee.sin_port))"
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var bytes = address.pointee.sin6_addr
                    guard inet_ntop(AF_INET6, &bytes, &text, socklen_t(text.count)) != nil else { return "unknown" }
                    return "[\(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))]:\(UInt16(bigEndian: address.pointee.sin6_port))"
                }
            }
        default: return "unknown"
        }
    }

    /// Milliseconds with three decimals (microsecond resolution), from nanoseconds.
    static func milliseconds(_ nanoseconds: UInt64) -> Double { Double(nanoseconds / 1000) / 1000 }
}
