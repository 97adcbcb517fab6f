import Foundation
import KVMSandbox
import Testing

extension KVMTests {
    /// The vDSO: `clock_gettime`, `gettimeofday`, `time` and `getcpu` answered in the guest
    /// from the TSC and the host's parameters, without a system call, agreeing with the host.
    @Suite struct TimeInGuest {
        static let expected = """
            backwards 0
            clock 0 agrees
            clock 1 agrees
            clock 4 agrees
            clock 7 agrees
            clock 5 agrees
            gettimeofday and time agree
            cpu time works
            sched_getcpu 0

            """

        /// musl finds the vDSO through AT_SYSINFO_EHDR: 20,000 clock reads make no system call
        /// (only the test's own raw ones and the CPU-time clock do), and agree with the host's.
        @Test func clocksRunInTheGuest() throws {
            var counts: [String: Int] = [:]
            let (outcome, stdout, _) = try Guests.run("vdso", setUp: { _ in }, after: { counts = $0.systemCallCounts })
            #expect(outcome == .exited(status: 0))
            #expect(stdout == Self.expected)
            #expect((counts["clock_gettime"] ?? 0) <= 10, "\(counts)")
        }

        /// `timeInGuest = false`: no vDSO; the same answers, every read a system call.
        @Test func withoutTheVDSOEveryReadIsASystemCall() throws {
            var counts: [String: Int] = [:]
            let (outcome, stdout, _) = try Guests.run("vdso", configure: { $0.timeInGuest = false }, after: { counts = $0.systemCallCounts })
            #expect(outcome == .exited(status: 0))
            #expect(stdout == Self.expected)
            #expect((counts["clock_gettime"] ?? 0) >= 20_000, "\(counts)")
        }

        /// glibc (python3, dynamic) uses it too: a loop of `time.monotonic()` and `time.time()`
        /// makes no clock system call.
        @Test func glibcProgramsUseIt() throws {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", "-c",
                                       "import time\nt = [time.monotonic() for _ in range(5000)]\nprint(all(a <= b for a, b in zip(t, t[1:])), abs(time.time() - time.clock_gettime(0)) < 1)"]
            configuration.standardOutput = .capture
            configuration.timeout = 60
            let sandbox = try Sandbox(elfPath: "/usr/bin/python3", configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self) == "True True\n")
            #expect((sandbox.systemCallCounts["clock_gettime"] ?? 0) < 50, "\(sandbox.systemCallCounts)")
        }
    }
}
