import Foundation
import Logging
import KVMSandbox
import KVMSandboxTools
import Synchronization
import Testing

/// Whether /dev/kvm can be used here. When not, every KVM test is skipped and says so loudly.
enum KVM {
    static let unavailableReason: String? = {
        do {
            _ = try KVMSystem.shared()
            return nil
        } catch {
            let message = "SKIPPING KVM TESTS: \(error)"
            FileHandle.standardError.write(Data("\n*** \(message) ***\n\n".utf8))
            return message
        }
    }()
    static var available: Bool {
        _ = quietLogs
        _ = systemCallsFromEnvironment
        return unavailableReason == nil
    }

    /// CI runs the suite three times with `KVMSANDBOX_SYSCALLS` = automatic, exit, exitless: the
    /// library reads no environment, so the suite maps it, once, before its first sandbox.
    static let systemCallsFromEnvironment: Void = {
        if let transport = HostCallTransport.fromEnvironment() { HostCallTransport.setProcessDefault(transport) }
    }()

    /// The servers under test log their lines (one per request, thousands in all) at warning
    /// and above only; set once, before the first KVM test makes a server (the suite's enabling
    /// condition reads `available` first). `LogLines` tests format lines without it.
    static let quietLogs: Void = LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = .warning
        return handler
    }
}

/// Guest programs compiled once per test process from `Guests/*.c` (and `Examples/`) with the
/// SDK toolchain, into a temporary directory.
enum Guests {
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let repository = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
    static let outputDirectory: URL = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kvmsandbox-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }()
    private static let cache = Mutex<[String: String]>([:])

    /// The path of guest `name` built from `source` with extra compiler `flags`.
    static func build(_ name: String, source: String? = nil, flags: [String] = ["-O2"]) throws -> String {
        let key = name + flags.joined(separator: " ")
        if let path = cache.withLock({ $0[key] }) { return path }
        let sourcePath = source ?? testsDirectory.deletingLastPathComponent().appendingPathComponent("Guests/\(name).c").path
        let output = outputDirectory.appendingPathComponent("\(name)-\(abs(key.hashValue)).elf").path
        try GuestToolchain().compile(flags + ["-o", output, sourcePath])
        cache.withLock { $0[key] = output }
        return output
    }

    /// Runs guest `name` with `arguments`, output captured; returns the outcome and what it printed.
    static func run(_ name: String, _ arguments: [String] = [], flags: [String] = ["-O2"],
                    configure: (inout SandboxConfiguration) -> Void = { _ in },
                    setUp: (Sandbox) throws -> Void = { _ in },
                    after: (Sandbox) -> Void = { _ in }) throws -> (outcome: RunOutcome, stdout: String, stderr: String) {
        let path = try build(name, flags: flags)
        var configuration = SandboxConfiguration()
        configuration.arguments = [name] + arguments
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        configuration.timeout = 20
        configure(&configuration)
        let sandbox = try Sandbox(elfPath: path, configuration: configuration)
        try setUp(sandbox)
        let outcome = try sandbox.run()
        after(sandbox)
        return (outcome, String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self),
                String(decoding: sandbox.capturedOutput(fd: 2), as: UTF8.self))
    }

    /// The bytes of a built guest, for crafting malformed variants.
    static func bytes(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: try build(name))))
    }
}

func readBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
