import Foundation
import KVMSandbox
import Testing

extension KVMTests {
    /// Exitless system calls: the `syscall` entry (PVM's user stub; hardware KVM's CPL 0 one) posts to the mailbox and the polling
    /// thread serves what needs nothing of the vCPU. Same results either way; a guest that
    /// forges posts only affects itself. (The whole suite also runs with KVMSANDBOX_SYSCALLS
    /// set to exit and to exitless in CI.)
    @Suite struct ExitlessSystemCalls {
        static func python(_ transport: HostCallTransport) throws -> (outcome: RunOutcome, stdout: String, exitless: Int, total: Int) {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", "-c", "import hashlib, json, os; print(json.dumps([os.getpid(), hashlib.sha256(b'x').hexdigest()[:8]]))"]
            configuration.environment = ["LC_ALL=C"]
            configuration.memorySize = 128 << 20
            configuration.standardOutput = .capture
            configuration.standardError = .capture
            configuration.systemCallTransport = transport
            configuration.timeout = 30
            let sandbox = try Sandbox(elfPath: "/usr/bin/python3", configuration: configuration)
            let outcome = try sandbox.run()
            return (outcome, String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self),
                    sandbox.exitlessSystemCallCounts.values.reduce(0, +), sandbox.systemCallCounts.values.reduce(0, +))
        }

        /// python3 gives the same answer by exit and exitless.
        @Test func pythonGivesTheSameAnswerEitherWay() throws {
            let byExit = try Self.python(.exit)
            let exitless = try Self.python(.exitless)
            #expect(byExit.outcome == .exited(status: 0))
            #expect(exitless.outcome == .exited(status: 0))
            #expect(byExit.stdout == "[1, \"2d711642\"]\n")
            #expect(exitless.stdout == byExit.stdout)
            #expect(byExit.exitless == 0)
            // How many go without an exit depends on the poller getting a core (the suite runs
            // tests in parallel on few CPUs): a figure for the benchmark, not an assertion here.
            #expect(exitless.exitless <= exitless.total)
        }

        /// Calls the poller serves (getppid, clock_gettime, pread) and calls it sends back
        /// through the exit (mmap, munmap), many times: right results, and the direction flag the
        /// guest set before `syscall` is still set after it, whichever way it went.
        /// (Scripts/exitless-check runs the same guest on the emulated SVM machine's CPL 0 entry.)
        @Test(arguments: HostCallTransport.allCases)
        func resultsAndFlagsSurviveEitherPath(_ transport: HostCallTransport) throws {
            let path = try Guests.build("exitless-entry")
            let (outcome, stdout, _) = try Guests.run("exitless-entry", [path], configure: {
                $0.systemCallTransport = transport
                $0.files = [FileGrant(hostPath: path)]
            })
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "ok\n")
        }

        /// Anonymous memory handed out again over pages that were executable loses execute
        /// before the guest hears of the mapping, whichever thread served the `mmap` (the poller
        /// drops the old translations itself): calling into it is a #PF, not a return.
        @Test(arguments: HostCallTransport.allCases)
        func reusedExecutablePagesLoseExecute(_ transport: HostCallTransport) throws {
            let (outcome, stdout, _) = try Guests.run("exec-reuse", [], configure: {
                $0.systemCallTransport = transport
                $0.allowJIT = true
            })
            #expect(stdout == "reused\n")
            guard case .fault(let fault) = outcome else {
                Issue.record("expected a fault, got \(outcome)")
                return
            }
            #expect(fault.vector == 14)
        }

        /// A guest writing the mailbox itself: posts with garbage numbers (bit 62 set or not),
        /// bad pointers, buffers changed while they may be served, posts never waited for, a
        /// forged polling word and forged answers. Its ordinary calls still work, whichever way
        /// they travel, and the host neither crashes nor serves a call twice.
        @Test(arguments: HostCallTransport.allCases)
        func forgedPostsOnlyAffectTheGuest(_ transport: HostCallTransport) throws {
            let (outcome, stdout, _) = try Guests.run("mailbox-syscalls", [], configure: {
                $0.systemCallTransport = transport
                $0.timeout = 20
            })
            #expect(outcome == .exited(status: 0))
            // Forged posts of `write` the poller served are output the guest could have written
            // anyway; its own calls' results come last.
            #expect(stdout.hasSuffix("ok\n"))
        }
    }
}
