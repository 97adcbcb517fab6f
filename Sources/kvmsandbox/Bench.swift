import ArgumentParser
import Foundation
import KVMSandbox

/// `kvmsandbox bench`: the library's host call against the bare exit, and guest compute against
/// native, measured in one process run. Prints medians over batches and the ratios.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure host-call round trips against the bare out exit, and guest compute against native.")

    @Option(help: "Round trips per batch.")
    var iterations = 2000

    @Option(help: "Batches (the median is reported).")
    var batches = 7

    @Option(help: "Rounds of the compute benchmark.")
    var computeRounds = 200_000_000

    @Option(help: "Fork/reset cycles for the resource-flatness check.")
    var cycles = 10_000

    @Flag(help: "Skip the snapshot/fork/reset figures.")
    var skipFork = false

    @Flag(help: "Print one JSON object instead of the table.")
    var json = false

    func run() throws {
        let toolchain = try GuestToolchain()
        let benchSources = URL(fileURLWithPath: toolchain.includeDirectory).deletingLastPathComponent().appendingPathComponent("bench")
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("kvmsandbox-bench-\(getpid())")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        func build(_ name: String) throws -> String {
            let output = work.appendingPathComponent("\(name).elf").path
            try toolchain.compile(["-O2", "-o", output, benchSources.appendingPathComponent("\(name).c").path])
            return output
        }
        let loop = try build("hostcall_loop"), compute = try build("compute")
        progress("platform \(KVMPlatform.detect().rawValue)")

        progress("bare out round trip (floor)")
        let floor = try ExitFloor()
        _ = try floor.measure(count: iterations)
        let floorNs = median(try (0..<batches).map { _ in try floor.measure(count: iterations) })

        progress("library host call")
        func guestRun(_ path: String, _ arguments: [String], transport: HostCallTransport = .exit) throws -> Double {
            var configuration = SandboxConfiguration()
            configuration.hostCallTransport = transport
            configuration.arguments = [path] + arguments
            configuration.standardOutput = .discard
            let sandbox = try Sandbox(elfPath: path, configuration: configuration)
            try sandbox.register(HostCallNumber.firstUserNumber) { _ in 0 }
            let start = monotonicNanoseconds()
            let outcome = try sandbox.run()
            guard outcome == .exited(status: 0) else { throw ValidationError("benchmark guest: \(outcome)") }
            return Double(monotonicNanoseconds() - start)
        }
        // Per call: (run with N calls - run with 0 calls) / N, so VM start-up does not count.
        func perCall(_ transport: HostCallTransport, count: Int) throws -> Double {
            median(try (0..<batches).map { _ in
                (try guestRun(loop, ["\(count)"], transport: transport) - guestRun(loop, ["0"], transport: transport)) / Double(count)
            })
        }
        let hostcallNs = try perCall(.exit, count: iterations)
        progress("exitless host call (mailbox + polling thread), then everything on one core")
        let exitlessNs = try perCall(.exitless, count: iterations * 50)
        let oneCore = try onOneCore(.exitless, loop, count: iterations)
        let oneCoreExit = try onOneCore(.exit, loop, count: iterations)

        progress("compute: guest vs native (\(computeRounds) rounds)")
        let native = work.appendingPathComponent("compute-native").path
        try toolchain.compile(["-O2", "-o", native, benchSources.appendingPathComponent("compute.c").path])
        func nativeRun() throws -> Double {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: native)
            process.arguments = ["\(computeRounds)"]
            process.standardOutput = FileHandle.nullDevice
            let start = monotonicNanoseconds()
            try process.run()
            process.waitUntilExit()
            return Double(monotonicNanoseconds() - start)
        }
        let computeBatches = max(3, batches / 2)
        let nativeNs = median(try (0..<computeBatches).map { _ in try nativeRun() })
        let guestNs = median(try (0..<computeBatches).map { _ in try guestRun(compute, ["\(computeRounds)"]) })

        var results: [(String, Double)] = [
            ("floor_out_ns", floorNs), ("hostcall_ns", hostcallNs), ("hostcall_vs_floor", hostcallNs / floorNs),
            ("hostcall_exitless_ns", exitlessNs), ("hostcall_exitless_vs_floor", exitlessNs / floorNs),
            ("hostcall_exitless_1core_ns", oneCore), ("hostcall_exit_1core_ns", oneCoreExit),
            ("hostcall_exitless_1core_vs_exit", oneCore / oneCoreExit),
            ("compute_native_ns", nativeNs), ("compute_guest_ns", guestNs), ("compute_ratio", guestNs / nativeNs),
        ]
        if !skipFork {
            results += try ForkBench(service: try build("service"), batches: batches, cycles: cycles).run(progress: progress)
        }
        if json {
            let body = results.map { "\"\($0.0)\": \(String(format: "%.3f", $0.1))" }.joined(separator: ", ")
            print("{\"platform\": \"\(KVMPlatform.detect().rawValue)\", \(body)}")
        } else {
            print("platform: \(KVMPlatform.detect().rawValue)  (medians of \(batches) batches of \(iterations))")
            print("bare out round trip (floor)   \(String(format: "%10.0f ns", floorNs))")
            print("library host call             \(String(format: "%10.0f ns", hostcallNs))   \(String(format: "%.3fx", hostcallNs / floorNs)) the floor")
            print("compute, native process       \(String(format: "%10.2f ms", nativeNs / 1e6))")
            print("compute, guest (incl. VM)     \(String(format: "%10.2f ms", guestNs / 1e6))   \(String(format: "%.3fx", guestNs / nativeNs)) native")
            for (key, value) in results.dropFirst(3).filter({ !$0.0.hasPrefix("compute") }) {
                print(pad(key, 30) + String(format: value.magnitude < 10 ? "%12.3f" : "%12.0f", value))
            }
        }
    }

    /// Nanoseconds per host call of `loop` run by `kvmsandbox run` in a child process confined to
    /// CPU 0 (`taskset -c 0`): the vCPU thread, the poller and everything else share one core.
    private func onOneCore(_ transport: HostCallTransport, _ loop: String, count: Int) throws -> Double {
        let taskset = "/usr/bin/taskset"
        guard FileManager.default.isExecutableFile(atPath: taskset) else {
            throw ValidationError("\(taskset) is missing (apt-get install util-linux)")
        }
        func timedRun(_ calls: Int) throws -> Double {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: taskset)
            process.arguments = ["-c", "0", CommandLine.arguments[0], "run", "--host-calls", transport.rawValue, loop, "\(calls)"]
            let start = monotonicNanoseconds()
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw ValidationError("one-core run failed: \(process.terminationStatus)") }
            return Double(monotonicNanoseconds() - start)
        }
        return median(try (0..<batches).map { _ in (try timedRun(count) - timedRun(0)) / Double(count) })
    }

    private func progress(_ message: String) { printError("bench: \(message)...") }
}
