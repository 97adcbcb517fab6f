import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxTools

/// Threads and signals in `kvmsandbox bench`: a futex ping-pong between two guest threads, a
/// thread switch by `sched_yield`, and a signal's delivery with `rt_sigreturn`; each per round
/// trip, as a ratio to the exit floor, beside the same binary run as a process.
enum ThreadBench {
    static func run(into results: inout BenchResults, floor: Double, work: URL, rounds: Int, batches: Int) throws {
        let source = work.appendingPathComponent("thread-bench.c")
        let binary = work.appendingPathComponent("thread-bench").path
        try Data(ThreadBenchGuest.source.utf8).write(to: source)
        guard GuestToolchain.spawn(["gcc", "-static", "-O2", "-pthread", "-o", binary, source.path], discardingOutput: true) == 0 else {
            results.skip("futex_pingpong_ns", "gcc -static -pthread failed (glibc's static libraries: Scripts/setup)")
            return
        }
        func sandboxed(_ mode: String, _ count: Int) throws -> Double { try timedRun(binary, [mode, "\(count)"]) }
        func native(_ mode: String, _ count: Int) throws -> Double { try timed { try spawnAndWait(binary, [mode, "\(count)"]) } }
        for (mode, key) in [("pingpong", "futex_pingpong"), ("yield", "thread_switch"), ("signal", "signal_roundtrip")] {
            let inSandbox = median(try (0..<batches).map { _ in (try sandboxed(mode, rounds) - sandboxed(mode, 0)) / Double(rounds) })
            let natively = median(try (0..<batches).map { _ in (try native(mode, rounds * 10) - native(mode, 0)) / Double(rounds * 10) })
            results.add("\(key)_ns", inSandbox)
            results.add("native_\(key)_ns", natively)
            results.add("\(key)_vs_floor", inSandbox / floor)
            results.add("\(key)_vs_native", inSandbox / natively)
        }
    }
}
