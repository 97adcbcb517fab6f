import Foundation
import KVMSandbox
import Testing

extension KVMTests {
    /// Exitless host calls through the mailbox: correct under both transports, robust against a
    /// guest that scribbles on, floods or abandons the page, and still working on one core.
    @Suite struct Exitless {
        static func run(_ mode: String, _ arguments: [String] = [], transport: HostCallTransport = .exitless,
                        timeout: Double = 20) throws -> (outcome: RunOutcome, stdout: String) {
            let (outcome, stdout, _) = try Guests.run("mailbox", [mode] + arguments, configure: {
                $0.hostCallTransport = transport
                // With host calls by exit, no system calls by mailbox either: nothing polls.
                if transport == .exit { $0.systemCallTransport = .exit }
                $0.timeout = timeout
            }, setUp: { sandbox in
                try sandbox.register(HostCallNumber.firstUserNumber) { call in Int64(bitPattern: call[0] &+ 1) }
            })
            return (outcome, stdout)
        }

        @Test(arguments: HostCallTransport.allCases)
        func manyCallsGetTheirOwnResults(_ transport: HostCallTransport) throws {
            let (outcome, stdout) = try Self.run("calls", ["20000"], transport: transport)
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "ok\n")
        }

        @Test func scribblingOnTheMailboxNeitherExitsNorBreaksLaterCalls() throws {
            let (outcome, stdout) = try Self.run("scribble")
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "ok\n")
        }

        @Test func floodingTheMailboxLeavesOtherVMsServed() async throws {
            async let flood = Task.detached { try Self.run("flood") }.value
            async let honest = Task.detached { try Self.run("calls", ["5000"]) }.value
            let (flooded, served) = try await (flood, honest)
            #expect(flooded.outcome == .exited(status: 0) && flooded.stdout == "ok\n")
            #expect(served.outcome == .exited(status: 0) && served.stdout == "ok\n")
        }

        @Test func racingBuiltInCallsAgainstAPolledCallIsSafe() throws {
            // In a fork (where host writes are recorded for reset), a guest races a posted call
            // whose handler writes its memory against built-in calls that write it too.
            var configuration = SandboxConfiguration()
            configuration.arguments = ["mailbox", "race", "3000"]
            configuration.standardOutput = .capture
            configuration.hostCallTransport = .exitless
            configuration.timeout = 60
            let snapshot = try Snapshot(elfPath: try Guests.build("mailbox"), configuration: configuration)
            let vm = try snapshot.fork()
            try vm.register(HostCallNumber.firstUserNumber + 1) { call in
                try call.memory.write([UInt8](repeating: 0x5a, count: Int(min(call[1], 256))), to: call[0])
                return 0
            }
            #expect(try vm.run() == .exited(status: 0))
            #expect(String(decoding: vm.capturedOutput(fd: 1), as: UTF8.self) == "ok\n")
            try vm.reset()
        }

        @Test func aForgedWaitIsRefused() throws {
            #expect(try Self.run("forged-wait").stdout == "result=-22\n")
            #expect(try Self.run("forged-wait", transport: .exit).stdout == "result=-38\n")
        }

        @Test func aGuestThatNeverWaitsOrNeverStopsCallingStillTimesOut() throws {
            for mode in ["post-and-spin", "call-forever"] {
                let start = monotonicNanoseconds()
                let (outcome, _) = try Self.run(mode, timeout: 0.3)
                guard case .timedOut = outcome else { Issue.record("\(mode): \(outcome)"); continue }
                #expect(monotonicNanoseconds() - start < 2_000_000_000, "\(mode)")
            }
        }

        @Test func onOneCoreTheFallbackKeepsCallsWorking() throws {
            // The vCPU thread and the poller on the same CPU: the guest's spin finds no answer and
            // falls back to exits; every call still returns its own result.
            #expect(CPUAffinity.pinCurrentThread(to: 0))
            CPUAffinity.pinExitlessPoller(to: 0)
            defer {
                CPUAffinity.unpinCurrentThread()
                CPUAffinity.pinExitlessPoller(to: nil)
            }
            let (outcome, stdout) = try Self.run("calls", ["2000"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "ok\n")
        }
    }
}
