import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxTools

/// Clock reads in `kvmsandbox bench`: `clock_gettime(CLOCK_MONOTONIC)` in a loop, in the
/// sandbox with its vDSO (the default), without it (`timeInGuest = false`: a system call each)
/// and natively, in one run: time per call and VM exits per call (a count that does not depend
/// on the machine's load).
enum ClockBench {
    /// The guest: `N` clock reads, then exit. Static glibc, so the same binary runs both ways.
    static let source = #"""
    #include <stdlib.h>
    #include <time.h>
    int main(int argc, char **argv) {
        long rounds = argc > 1 ? atol(argv[1]) : 0;
        struct timespec t;
        for (long i = 0; i < rounds; i++) clock_gettime(CLOCK_MONOTONIC, &t);
        return 0;
    }
    """#

    static func run(into results: inout BenchResults, work: URL, rounds: Int, batches: Int) throws {
        guard let binary = try staticBenchProgram("clock-bench", source: source, work: work, results: &results, skipKey: "clock_gettime_ns") else { return }
        /// One run in the sandbox: its wall time and exits.
        func sandboxed(_ count: Int, vdso: Bool) throws -> (nanoseconds: Double, exits: Int) {
            var configuration = SandboxConfiguration()
            configuration.arguments = [binary, "\(count)"]
            configuration.timeInGuest = vdso
            configuration.systemCallTransport = .exit  // exits counted as they are, without a poller's help
            let sandbox = try Sandbox(elfPath: binary, configuration: configuration)
            let start = monotonicNanoseconds()
            let outcome = try sandbox.run()
            guard outcome == .exited(status: 0) else { throw ValidationError("clock bench: \(outcome)") }
            return (Double(monotonicNanoseconds() - start), sandbox.statistics.exits)
        }
        for (vdso, key) in [(true, "clock_gettime"), (false, "clock_gettime_no_vdso")] {
            let count = vdso ? rounds * 100 : rounds
            var exits = 0.0
            let perCall = median(try (0..<batches).map { _ in
                let many = try sandboxed(count, vdso: vdso), none = try sandboxed(0, vdso: vdso)
                exits = Double(many.exits - none.exits) / Double(count)
                return (many.nanoseconds - none.nanoseconds) / Double(count)
            })
            results.add("\(key)_ns", perCall)
            results.add("\(key)_exits_per_call", exits)
        }
        let natively = median(try (0..<batches).map { _ in
            (try timed { try spawnAndWait(binary, ["\(rounds * 100)"]) } - timed { try spawnAndWait(binary, ["0"]) }) / Double(rounds * 100)
        })
        results.add("native_clock_gettime_ns", natively)
        if let inSandbox = results["clock_gettime_ns"] { results.add("clock_gettime_vs_native", inSandbox / natively) }
        if let inSandbox = results["clock_gettime_ns"], let viaExit = results["clock_gettime_no_vdso_ns"] {
            results.add("clock_gettime_vdso_speedup", viaExit / inSandbox)
        }
    }
}
