import KVMSandbox
import Testing

/// Handlers the `hostcalls` guest uses.
func registerTestHandlers(_ sandbox: Sandbox) throws {
    let base = HostCallNumber.firstUserNumber
    try sandbox.register(base) { call in Int64(call.arguments.reduce(0, +)) }
    try sandbox.register(base + 1) { call in
        let count = Int(min(call[1], 1 << 20))
        try call.memory.write([UInt8](repeating: UInt8(truncatingIfNeeded: call[2]), count: count), to: call[0])
        return Int64(count)
    }
    try sandbox.register(base + 2) { call in Int64(try call.memory.readCString(call[0], maxLength: 4096).utf8.count) }
    try sandbox.register(base + 3) { call in
        guard call[1] <= 1 << 20 else { throw GuestMemoryError(address: call[0], count: call[1]) }
        return Int64(try call.memory.read(call[0], count: Int(call[1])).reduce(0) { $0 + Int($1) })
    }
    struct HandlerBug: Error {}
    try sandbox.register(base + 4) { _ in throw HandlerBug() }
}

extension KVMTests {
    @Suite struct HostCalls {
        /// Both transports: every host-call test runs by exit and exitless.
        static let transports: [HostCallTransport] = [.exit, .exitless]

        func run(_ mode: String, _ transport: HostCallTransport = .exit) throws -> (RunOutcome, String, String) {
            try Guests.run("hostcalls", [mode], configure: { $0.hostCallTransport = transport }, setUp: registerTestHandlers)
        }

        @Test(arguments: transports, ["echo", "unknown", "unknown-builtin", "fill", "puts", "read-sum", "write-badfd"])
        func callSucceedsWithTheDocumentedResult(transport: HostCallTransport, mode: String) throws {
            let (outcome, stdout, _) = try run(mode, transport)
            #expect(outcome == .exited(status: 0), "\(mode): \(stdout)")
        }

        /// Every kind of bad pointer or length returns -EFAULT to the guest, which keeps running.
        @Test(arguments: transports, ["null", "wild", "kernel-half", "host-address", "write-rodata", "write-code", "read-gdt",
                                      "overflow-length", "straddle", "unterminated", "write-bad", "write-huge"])
        func badPointerReturnsEFAULT(transport: HostCallTransport, mode: String) throws {
            let (outcome, stdout, _) = try run(mode, transport)
            #expect(outcome == .exited(status: 0), "\(mode): \(stdout)")
            #expect(stdout == "result=-14\n")
        }

        @Test(arguments: transports)
        func handlerErrorEndsTheRunWith(transport: HostCallTransport) throws {
            let (outcome, _, _) = try run("throw", transport)
            guard case .hostCallFailed(let number, _) = outcome else {
                Issue.record("expected hostCallFailed, got \(outcome)")
                return
            }
            #expect(number == HostCallNumber.firstUserNumber + 4)
        }

        @Test func writeToStderrIsCaptured() throws {
            let (outcome, stdout, stderr) = try run("write-ok")
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "result=10\n")
            #expect(stderr == "to stderr\n")
        }

        @Test func handlerErrorEndsTheRun() throws {
            let (outcome, _, _) = try run("throw")
            guard case .hostCallFailed(let number, _) = outcome else {
                Issue.record("expected hostCallFailed, got \(outcome)")
                return
            }
            #expect(number == HostCallNumber.firstUserNumber + 4)
            #expect(outcome.exitStatus == ExitStatus.abiViolation)
        }

        @Test func aHandlerThatRunsTheGuestAgainIsRefused() throws {
            /// What the handler reaches: its own sandbox (a handler is `@Sendable`; this one is
            /// called on the vCPU's thread only, by exit) and what re-running it threw.
            final class Reentry: @unchecked Sendable {
                weak var sandbox: Sandbox?
                var thrown: (any Error)?
            }
            let reentry = Reentry()
            let (outcome, _, _) = try Guests.run("hostcalls", ["echo"], setUp: { sandbox in
                reentry.sandbox = sandbox
                try sandbox.register(HostCallNumber.firstUserNumber) { _ in
                    do { _ = try reentry.sandbox?.run() } catch { reentry.thrown = error; throw error }
                    return 0
                }
            })
            #expect(reentry.thrown as? SandboxError == .alreadyRunning)
            guard case .hostCallFailed(_, let message) = outcome else {
                Issue.record("expected hostCallFailed, got \(outcome)")
                return
            }
            #expect(message.contains("cannot be called from one of its own handlers"))
        }

        @Test func builtinNumbersCannotBeRegistered() throws {
            let sandbox = try Sandbox(elfPath: try Guests.build("hostcalls"))
            #expect(throws: SandboxError.reservedHostCallNumber(1)) { try sandbox.register(1) { _ in 0 } }
        }

        @Test func guestMemoryRoundTripThroughTheView() throws {
            var configuration = SandboxConfiguration()
            configuration.standardOutput = .discard
            let sandbox = try Sandbox(elfPath: try Guests.build("hostcalls"), configuration: configuration)
            // The data symbol `data` is initialized to "initialized data".
            let symbol = try #require(sandbox.program.symbols.symbol(named: "data"))
            let address = sandbox.program.base + symbol.address
            #expect(try sandbox.guestMemory.readCString(address, maxLength: 64) == "initialized data")
            try sandbox.guestMemory.write(Array("rewritten".utf8) + [0], to: address)
            #expect(try sandbox.guestMemory.readCString(address, maxLength: 64) == "rewritten")
            try sandbox.guestMemory.store(UInt64(0x1122_3344_5566_7788), at: address)
            #expect(try sandbox.guestMemory.load(UInt64.self, at: address) == 0x1122_3344_5566_7788)
            // Code is read-only for the guest, so for its view too.
            let main = try #require(sandbox.program.symbols.symbol(named: "main"))
            #expect(throws: GuestMemoryError.self) { try sandbox.guestMemory.write([0], to: sandbox.program.base + main.address) }
            #expect(throws: GuestMemoryError.self) { _ = try sandbox.guestMemory.read(0, count: 1) }
            #expect(throws: GuestMemoryError.self) { _ = try sandbox.guestMemory.read(GuestLayout.systemPage, count: 1) }
            #expect(throws: GuestMemoryError.self) { _ = try sandbox.guestMemory.read(.max - 4, count: 16) }
        }
    }
}
