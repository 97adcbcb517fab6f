
/// A CPU exception that ended the guest.
public struct GuestFault: Sendable, Equatable, Codable, CustomStringConvertible {
    /// The exception vector (14 = #PF, 13 = #GP, 6 = #UD, ...).
    public let vector: UInt8
    /// The error code the CPU pushed, for vectors that have one.
    public let errorCode: UInt32?
    /// For #PF, the faulting virtual address (CR2).
    public let faultAddress: UInt64?
    /// Registers at the faulting instruction.
    public let registers: GuestRegisters
    /// `function+0xoffset` of the faulting instruction, when the ELF has symbols.
    public let location: String?
    /// The call stack at the fault, symbolized from the guest's ELF.
    public let backtrace: Backtrace
    /// The faulting thread's id (`gettid`; 1 for the main thread).
    public var thread: Int32 = 1
    /// The other threads' call stacks at the moment of the fault, by thread id.
    public var otherThreads: [ThreadBacktrace] = []

    /// `#PF`, `#GP`, ...
    public var mnemonic: String { X86Exception.mnemonic(vector) }
    /// "page fault", "general protection", ...
    public var name: String { X86Exception.name(vector) }

    /// For #PF: what the access was and why it failed, decoded from the error code.
    public var pageFaultCause: String? {
        guard vector == 14, let code = errorCode else { return nil }
        let access = code & 0x10 != 0 ? "instruction fetch" : code & 0x2 != 0 ? "write" : "read"
        let why = code & 0x1 != 0 ? "protection violation" : "page not present"
        return "\(access), \(why)\(code & 0x4 == 0 ? " (supervisor access)" : "")"
    }

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String {
        var text = "\(mnemonic) \(X86Exception.name(vector))"
        if let cause = pageFaultCause { text += " (\(cause))" }
        if let address = faultAddress { text += " at address 0x\(String(address, radix: 16))" }
        if let code = errorCode { text += ", error code 0x\(String(code, radix: 16))" }
        text += ", rip 0x\(String(registers.instructionPointer, radix: 16))"
        if let location { text += " in \(location)" }
        if thread != 1 || !otherThreads.isEmpty { text += " (thread \(thread))" }
        return text
    }
}

/// Another thread's call stack in a fault report.
public struct ThreadBacktrace: Sendable, Equatable, Codable {
    /// The thread id.
    public let thread: Int32
    /// Its call stack from its saved registers.
    public let backtrace: Backtrace
}

/// How a guest run ended. Guest misbehaviour is an outcome, not a thrown error.
public enum RunOutcome: Sendable, Equatable, CustomStringConvertible {
    /// The guest exited (exit, exit_group, or returning from main) with this status (0...255).
    case exited(status: Int32)
    /// `runUntilReady()`: the guest called `ks_ready()` and is paused there.
    case ready
    /// `call(_:_:)`: the guest function returned this value (its `rax`).
    case returned(UInt64)
    /// A CPU exception.
    case fault(GuestFault)
    /// The guest raised a signal at itself (e.g. `abort()` raises SIGABRT).
    case signaled(signal: Int32)
    /// The deadline passed; the guest was stopped at `rip`.
    case timedOut(seconds: Double, rip: UInt64)
    /// The guest left the VM in a way the ABI does not allow (I/O to an unknown port, `in`, ...).
    case abiViolation(String)
    /// An embedder's host-call handler threw an error that is not a guest error.
    case hostCallFailed(number: Int, message: String)
    /// The host failed while running the guest (a KVM ioctl failed, KVM could not enter the
    /// guest): not the guest's doing. `run()` also throws the error itself.
    case hostFailure(String)
    /// Every guest thread waits on a futex with no timeout and nothing else can run: Linux
    /// would hang forever. The futex addresses the threads wait on, by thread id.
    case deadlocked(waits: [ThreadWait])
    /// `InterruptHandle.interrupt()` stopped the guest at `rip` (a pool's task was cancelled).
    case interrupted(rip: UInt64)

    /// The fault, when the outcome is one.
    public var fault: GuestFault? {
        if case .fault(let fault) = self { return fault }
        return nil
    }

    /// The exit status `kvmsandbox run` uses for this outcome (documented in the README).
    public var exitStatus: Int32 {
        switch self {
        case .exited(let status): return status
        case .ready, .returned: return 0
        case .fault(let fault): return 128 &+ X86Exception.signal(fault.vector)
        // Signals are 1...64 (the host refuses others); anything else would not be a signal status.
        case .signaled(let signal): return (1...64).contains(signal) ? 128 + signal : ExitStatus.abiViolation
        case .timedOut: return ExitStatus.timeout
        case .abiViolation, .hostCallFailed: return ExitStatus.abiViolation
        case .hostFailure: return ExitStatus.hostFailure
        case .deadlocked: return ExitStatus.deadlock
        case .interrupted: return ExitStatus.interrupted
        }
    }

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String {
        switch self {
        case .exited(let status): return "exited with status \(status)"
        case .ready: return "ready (paused at ks_ready())"
        case .returned(let value): return "returned \(value)"
        case .fault(let fault): return "fault: \(fault)"
        case .signaled(let signal): return "killed by signal \(signal)\(signal == 6 ? " (SIGABRT: abort())" : "")"
        case .timedOut(let seconds, let rip):
            return "timed out after \(seconds) s (stopped at rip 0x\(String(rip, radix: 16)))"
        case .abiViolation(let message): return "ABI violation: \(message)"
        case .hostCallFailed(let number, let message): return "host call \(number) failed: \(message)"
        case .hostFailure(let message): return "host failure: \(message)"
        case .deadlocked(let waits):
            let list = waits.map { "thread \($0.thread) on futex 0x\(String($0.futex, radix: 16))" }.joined(separator: ", ")
            return "deadlocked: every thread waits with no timeout (\(list))"
        case .interrupted(let rip): return "interrupted (stopped at rip 0x\(String(rip, radix: 16)))"
        }
    }
}

/// Exit statuses of `kvmsandbox run` that are not the guest's own.
public enum ExitStatus {
    /// The guest ran past `--timeout`.
    public static let timeout: Int32 = 124
    /// kvmsandbox could not run the guest (no KVM, bad ELF, bad options).
    public static let sandboxError: Int32 = 125
    /// The guest broke the host-call ABI, or a host-call handler failed. (126 before 0.5.0:
    /// that is now a shell's "found but cannot execute".)
    public static let abiViolation: Int32 = 121
    /// The program is not something that can be executed (a directory, a device), as a shell says.
    public static let notExecutable: Int32 = 126
    /// The program was not found, as a shell says.
    public static let notFound: Int32 = 127
    /// The host failed while the guest ran (a KVM ioctl failed, KVM could not enter the guest).
    public static let hostFailure: Int32 = 123
    /// Every guest thread waited on a futex that nothing could wake.
    public static let deadlock: Int32 = 122
    /// The embedder interrupted the guest (`InterruptHandle`): 128 + SIGINT, as a shell shows Ctrl-C.
    public static let interrupted: Int32 = 130
}

/// A thread that waits on a futex (a deadlock report).
public struct ThreadWait: Sendable, Equatable, Codable {
    /// The thread id (`gettid`).
    public let thread: Int32
    /// The guest address of the futex word.
    public let futex: UInt64
}

/// What an exception handler decided about a CPU exception.
public enum ExceptionDecision: Sendable {
    /// End the run with a `.fault` outcome.
    case stop
    /// Continue the guest with the (possibly changed) registers.
    case resume
}

/// Sees a CPU exception before it ends a run; may change the registers and resume the guest.
public typealias ExceptionHandler = (_ fault: GuestFault, _ registers: inout GuestRegisters) -> ExceptionDecision

/// A run's outcome as plain data, for JSON (`kvmsandbox run --report-json`).
public struct RunReport: Sendable, Codable, Equatable {
    /// `exited`, `ready`, `returned`, `fault`, `signaled`, `timedOut`, `abiViolation`, `hostCallFailed` or `hostFailure`.
    public let outcome: String
    /// The exit status `kvmsandbox run` uses.
    public let exitStatus: Int32
    /// One line for people.
    public let summary: String
    /// The exception, for `fault`.
    public let fault: Fault?
    /// Linux system calls made, by name (when the report was made with them).
    public var systemCalls: [String: Int]?
    /// System calls answered `ENOSYS` because they are not implemented, by name.
    public var unimplementedSystemCalls: [String: Int]?
    /// Set when the guest was refused memory because its memory size was used up.
    public var memoryLimit: String?
    /// VM exits the run took (when the report was made with the sandbox).
    public var exits: Int?
    /// The most guest memory the run used, in bytes (`Sandbox.guestMemoryUsed`), and the limit.
    public var peakGuestMemory: UInt64?, guestMemoryLimit: UInt64?
    /// Set by the CLI: its version, the report format's version (`RunReport.schemaVersion`) and
    /// the run's wall-clock time in seconds, loading included.
    public var version: String?, schemaVersion: Int?, wallSeconds: Double?

    /// The version of this report's layout: 2 added `exits`, `peakGuestMemory`,
    /// `guestMemoryLimit`, `version`, `schemaVersion` and `wallSeconds` (1 had none of them).
    public static let currentSchemaVersion = 2

    /// A CPU exception with every decoded field spelled out.
    public struct Fault: Sendable, Codable, Equatable {
        /// The vector (14 = #PF, ...).
        public let vector: UInt8
        /// `#PF`, `#GP`, ...
        public let mnemonic: String
        /// "page fault", ...
        public let name: String
        /// The error code the CPU pushed, if any.
        public let errorCode: UInt32?
        /// CR2, for #PF.
        public let faultAddress: UInt64?
        /// For #PF: read/write/fetch and absent/protected.
        public let pageFaultCause: String?
        /// `function+0xoffset` of the faulting instruction.
        public let location: String?
        /// All general-purpose registers.
        public let registers: GuestRegisters
        /// The call stack.
        public let backtrace: Backtrace
    }

    /// The report of `outcome` with the system-call counts of `sandbox`.
    public init(_ outcome: RunOutcome, sandbox: Sandbox) {
        self.init(outcome)
        systemCalls = sandbox.systemCallCounts
        unimplementedSystemCalls = sandbox.unimplementedSystemCalls
        exits = sandbox.statistics.exits
        peakGuestMemory = sandbox.guestMemoryUsed
        guestMemoryLimit = sandbox.configuration.memorySize
        if sandbox.memoryLimitHits > 0 {
            memoryLimit = "the guest hit its memory limit (\(sandbox.configuration.memorySize >> 20) MiB) \(sandbox.memoryLimitHits) time(s)"
        }
    }

    /// The report of `outcome`.
    public init(_ outcome: RunOutcome) {
        exitStatus = outcome.exitStatus
        summary = outcome.description
        switch outcome {
        case .exited: self.outcome = "exited"
        case .ready: self.outcome = "ready"
        case .returned: self.outcome = "returned"
        case .fault: self.outcome = "fault"
        case .signaled: self.outcome = "signaled"
        case .timedOut: self.outcome = "timedOut"
        case .abiViolation: self.outcome = "abiViolation"
        case .hostCallFailed: self.outcome = "hostCallFailed"
        case .hostFailure: self.outcome = "hostFailure"
        case .deadlocked: self.outcome = "deadlocked"
        case .interrupted: self.outcome = "interrupted"
        }
        if case .fault(let f) = outcome {
            fault = Fault(vector: f.vector, mnemonic: f.mnemonic, name: f.name, errorCode: f.errorCode,
                          faultAddress: f.faultAddress, pageFaultCause: f.pageFaultCause, location: f.location,
                          registers: f.registers, backtrace: f.backtrace)
        } else {
            fault = nil
        }
    }
}
