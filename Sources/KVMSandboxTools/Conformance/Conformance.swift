import KVMSandbox
/// A corpus of prebuilt guest behaviours with their expected outcomes, checked the same way on
/// every platform: by the test suite on this machine's /dev/kvm and by `kvmsandbox conformance`
/// inside the emulated SVM machine (`Scripts/conformance`). The corpus is
/// `Tests/Conformance/corpus.json`.
public struct ConformanceCorpus: Codable, Sendable {
    /// How each guest ELF is built: file name -> source (relative to the repository) and flags.
    public var builds: [String: Build]
    /// The cases, each one guest run (or one fork scenario) and its expected outcome.
    public var cases: [Case]

    /// A guest to compile with the SDK toolchain.
    public struct Build: Codable, Sendable {
        /// The C source, relative to the repository.
        public var source: String
        /// Compiler flags (besides the SDK's own).
        public var flags: [String]
    }

    /// One behaviour.
    public struct Case: Codable, Sendable, CustomStringConvertible {
        /// A short unique name.
        public var name: String
        /// The ELF (a key of `builds`).
        public var elf: String
        /// argv[1...].
        public var arguments: [String]?
        /// Seconds; generous, since the emulated machine is slow.
        public var timeout: Double?
        /// In-memory directories the guest gets (`SandboxConfiguration.memoryDirectories`).
        public var memoryDirectories: [String]?
        /// `run` (default) or `forkIsolation` (snapshot, two forks, a reset; `elf` is a service).
        public var kind: String?
        /// What every platform must produce.
        public var expect: Expectation
        /// Fields that differ on hardware KVM (VMX/SVM), with the reason in `note`.
        public var hardware: Expectation?

        public var description: String { name }
    }

    /// Expected fields; absent ones are not checked.
    public struct Expectation: Codable, Sendable {
        /// `exited`, `fault`, `signaled`, `timedOut`, `abiViolation`.
        public var outcome: String?
        /// `kvmsandbox run`'s exit status for the outcome.
        public var exitStatus: Int32?
        /// Everything the guest wrote to fd 1.
        public var stdout: String?
        /// The exception vector.
        public var vector: UInt8?
        /// The exception's error code.
        public var errorCode: UInt32?
        /// Hex, e.g. "0x7ffffffff000".
        public var faultAddress: String?
        /// The first frames' function names, innermost first.
        public var frames: [String]?
        /// Why the backtrace ended.
        public var backtraceEnd: String?
        /// Why a hardware value differs.
        public var note: String?
    }
}

/// Runs corpus cases against this machine's KVM.
public enum ConformanceRunner {
    /// Runs `testCase` with its ELF from `directory`; returns what did not match (empty: pass).
    public static func check(_ testCase: ConformanceCorpus.Case, elfDirectory directory: String,
                             system: KVMSystem? = nil) throws -> [String] {
        let kvm: KVMSystem
        if let system { kvm = system } else { kvm = try KVMSystem.shared() }
        let path = directory + "/" + testCase.elf
        var configuration = SandboxConfiguration()
        configuration.arguments = [testCase.elf] + (testCase.arguments ?? [])
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        configuration.timeout = testCase.timeout ?? 60
        configuration.memoryDirectories = testCase.memoryDirectories ?? []
        if testCase.kind == "forkIsolation" { return try forkIsolation(path, configuration, kvm) }

        let sandbox = try Sandbox(elfPath: path, configuration: configuration, system: kvm)
        let outcome = try sandbox.run()
        let stdout = String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self)
        var expected = testCase.expect
        if kvm.platform != .pvm, let hardware = testCase.hardware { expected.merge(hardware) }
        return compare(outcome, stdout: stdout, with: expected)
    }

    static func compare(_ outcome: RunOutcome, stdout: String, with expected: ConformanceCorpus.Expectation) -> [String] {
        var failures: [String] = []
        func expect<T: Equatable>(_ field: String, _ want: T?, _ got: T?) {
            if let want, want != got { failures.append("\(field): expected \(want), got \(got.map { "\($0)" } ?? "nothing")") }
        }
        let report = RunReport(outcome)
        expect("outcome", expected.outcome, report.outcome)
        expect("exit status", expected.exitStatus, outcome.exitStatus)
        expect("stdout", expected.stdout, stdout)
        let fault = report.fault
        expect("vector", expected.vector, fault?.vector)
        expect("error code", expected.errorCode, fault?.errorCode)
        expect("fault address", expected.faultAddress?.lowercased(), fault?.faultAddress.map { "0x" + String($0, radix: 16) })
        if let frames = expected.frames {
            expect("frames", frames, fault.map { Array($0.backtrace.frames.prefix(frames.count).map { $0.function ?? "?" }) })
        }
        expect("backtrace end", expected.backtraceEnd, fault?.backtrace.end)
        if !failures.isEmpty { failures.append("(outcome: \(outcome))") }
        return failures
    }

    /// Fork A writes a secret; fork B, a new fork and A after a reset must not see it.
    private static func forkIsolation(_ path: String, _ configuration: SandboxConfiguration, _ kvm: KVMSystem) throws -> [String] {
        let snapshot = try Snapshot(elfPath: path, configuration: configuration, system: kvm)
        let a = try snapshot.fork(), b = try snapshot.fork()
        var failures: [String] = []
        func expect(_ what: String, _ outcome: RunOutcome, _ value: UInt64) {
            if outcome != .returned(value) { failures.append("\(what): expected .returned(\(value)), got \(outcome)") }
        }
        expect("A writes", try a.call("write_secret", .string("s3cret")), 1)
        expect("A reads", try a.call("read_secret"), UInt64(UInt8(ascii: "s")))
        expect("B reads", try b.call("read_secret"), 0)
        expect("a new fork reads", try snapshot.fork().call("read_secret"), 0)
        try a.reset()
        expect("A after reset reads", try a.call("read_secret"), 0)
        let crash = try a.call("crash")
        if crash.fault?.vector != 14 { failures.append("crash in a call: expected #PF, got \(crash)") }
        try a.reset()
        expect("A after a fault and a reset", try a.call("add", 40, 2), 42)
        return failures
    }
}

extension ConformanceCorpus.Expectation {
    /// Overrides this expectation's fields with those set in `other`.
    mutating func merge(_ other: Self) {
        outcome = other.outcome ?? outcome
        exitStatus = other.exitStatus ?? exitStatus
        stdout = other.stdout ?? stdout
        vector = other.vector ?? vector
        errorCode = other.errorCode ?? errorCode
        faultAddress = other.faultAddress ?? faultAddress
        frames = other.frames ?? frames
        backtraceEnd = other.backtraceEnd ?? backtraceEnd
    }
}
