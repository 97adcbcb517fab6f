import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxTools
#if canImport(Glibc)
import Glibc
#endif

/// `kvmsandbox bench`: every figure of the project in one process run, each beside its baseline
/// measured in the same run: the exit floor, trap methods, host calls (exit, exitless, one
/// core), VM creation vs a bare VM vs a process, fork, reset, guest calls, pooled requests,
/// compute vs native, and Wasmtime. Medians in nanoseconds, p99 where it matters.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure traps, host calls, VM creation, fork/reset, pooled requests, compute, and the alternatives.",
        discussion: "Figures are explained in BENCHMARKS.md. Progress goes to stderr; --json prints one object.")

    @Option(help: "Round trips per batch for per-call figures.")
    var iterations = 2000

    @Option(help: "Batches (the median is reported).")
    var batches = 7

    @Option(help: "Rounds of the compute benchmark.")
    var computeRounds = 200_000_000

    @Option(help: "Fork/reset cycles for the resource-flatness check.")
    var cycles = 10_000

    @Flag(help: "Skip the snapshot/fork/reset figures.")
    var skipFork = false

    @Flag(help: "Only the parked-VM figures, beside the exit floor and Wasmtime.")
    var parkedOnly = false

    @Flag(help: "Only the process figures (fork, posix_spawn + exec, a bash pipeline), beside native.")
    var processesOnly = false

    @Flag(help: "Only the clock figures (clock_gettime through the vDSO, by system call, natively).")
    var clocksOnly = false

    @Flag(help: "A short run: fewer iterations, batches, rounds and cycles.")
    var quick = false

    @Flag(help: "Print one JSON object instead of the table.")
    var json = false

    func validate() throws {
        try OptionChecks.count(iterations, in: 1...100_000_000, option: "--iterations")
        try OptionChecks.count(batches, in: 1...10_000, option: "--batches")
        try OptionChecks.count(computeRounds, in: 1...100_000_000_000, option: "--compute-rounds")
        try OptionChecks.count(cycles, in: 1...100_000_000, option: "--cycles")
    }

    func run() throws {
        let iterations = quick ? 200 : self.iterations, batches = quick ? 3 : self.batches
        let computeRounds = quick ? 20_000_000 : self.computeRounds, cycles = quick ? 500 : self.cycles
        let samples = quick ? 21 : 101
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
        let traps = try build("traps"), compute = try build("compute"), trivial = try build("trivial")
        let files = try build("files")
        let platform = KVMPlatform.detect().rawValue
        var results = BenchResults()
        progress("platform \(platform), \(CPUAffinity.availableCPUs) CPUs")

        progress("bare out round trip (floor)")
        let floorVM = try ExitFloor()
        _ = try floorVM.measure(count: iterations)
        let floor = median(try (0..<batches).map { _ in try floorVM.measure(count: iterations) })
        results.add("floor_out_ns", floor)
        if clocksOnly {
            try ClockBench.run(into: &results, work: work, rounds: max(iterations / 10, 100), batches: batches)
            print(json ? results.json(platform: platform) : results.table())
            return
        }
        if processesOnly {
            try ProcessBench.run(into: &results, work: work, rounds: max(iterations / 50, 10), batches: batches)
        progress("clocks: clock_gettime through the vDSO, by system call, natively")
        try ClockBench.run(into: &results, work: work, rounds: max(iterations / 10, 100), batches: batches)
            print(json ? results.json(platform: platform) : results.table())
            return
        }
        if parkedOnly {
            let snapshot = try Snapshot(elfPath: try build("service"), configuration: ForkBench.configuration(memory: 16 << 20))
            try ParkedBench(snapshot: snapshot, samples: samples).run(into: &results, floor: floor, progress: progress)
            try wasmtime(&results, benchSources: benchSources, work: work)
            print(json ? results.json(platform: platform) : results.table())
            return
        }

        progress("trap methods: out, mmio, syscall, exception, exitless")
        func guestRun(_ arguments: [String], transport: HostCallTransport, syscalls: HostCallTransport = .exit, typed: Bool = false) throws -> Double {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["traps"] + arguments
            configuration.standardOutput = .discard
            configuration.hostCallTransport = transport
            configuration.systemCallTransport = syscalls
            let sandbox = try Sandbox(elfPath: traps, configuration: configuration)
            if typed {
                try sandbox.register(HostCallNumber.firstUserNumber) { (value: Int64) -> Int64 in value &+ 1 }
            } else {
                try sandbox.register(HostCallNumber.firstUserNumber) { call in Int64(bitPattern: call[0] &+ 1) }
            }
            sandbox.onException { fault, registers in  // the exception trap: ud2 as a host call
                guard fault.vector == 6, registers.rax == UInt64(HostCallNumber.firstUserNumber) else { return .stop }
                registers.rax = registers.rdi &+ 1
                registers.rip += 2
                return .resume
            }
            let start = monotonicNanoseconds()
            let outcome = try sandbox.run()
            guard outcome == .exited(status: 0) else { throw ValidationError("trap guest \(arguments): \(outcome)") }
            return Double(monotonicNanoseconds() - start)
        }
        // Per call: (run with N calls - run with 0 calls) / N, so VM start-up does not count.
        func perCall(_ method: String, _ transport: HostCallTransport, count: Int, syscalls: HostCallTransport = .exit,
                     typed: Bool = false) throws -> Double {
            median(try (0..<batches).map { _ in
                (try guestRun([method, "\(count)"], transport: transport, syscalls: syscalls, typed: typed)
                    - guestRun([method, "0"], transport: transport, syscalls: syscalls, typed: typed)) / Double(count)
            })
        }
        for method in ["out", "mmio", "syscall", "exception"] {
            let value = try perCall(method, .exit, count: iterations)
            results.add("trap_\(method)_ns", value)
            results.add("trap_\(method)_vs_floor", value / floor)
        }
        let exitless = try perCall("exitless", .exitless, count: iterations * 50)
        results.add("trap_exitless_ns", exitless)
        results.add("trap_exitless_vs_floor", exitless / floor)
        // A Linux system call (getppid) served by the polling thread from the exitless stub.
        let exitlessSyscall = try perCall("syscall", .exit, count: iterations * 50, syscalls: .exitless)
        results.add("trap_syscall_exitless_ns", exitlessSyscall)
        results.add("trap_syscall_exitless_vs_floor", exitlessSyscall / floor)
        let hostcall = try perCall("exitless", .automatic, count: iterations * 10)
        results.add("hostcall_ns", hostcall)
        // The same call to a typed host function (`register(_:) { (value: Int64) -> Int64 in ... }`).
        let typedHostcall = try perCall("exitless", .automatic, count: iterations * 10, typed: true)
        results.add("hostcall_typed_ns", typedHostcall)
        results.add("hostcall_typed_vs_raw", typedHostcall / hostcall)
        results.add("hostcall_vs_floor", hostcall / floor)

        progress("Linux layer: getppid, open + read + close, busybox sha256sum (each vs native)")
        try LinuxBench.run(into: &results, floor: floor, files: files, work: work, rounds: iterations, batches: batches)

        progress("threads and signals: futex ping-pong, thread switch, signal round trip (each vs native)")
        try ThreadBench.run(into: &results, floor: floor, work: work, rounds: max(iterations / 4, 50), batches: batches)

        progress("dynamic programs: python3/sqlite3/lua5.4 start-up, pooled python3 requests, idle forks (each vs native)")
        try DynamicBench.run(into: &results, work: work, batches: batches)

        progress("processes: fork + exit + wait, posix_spawn + exec + wait, a shared-memory semaphore round trip, bash -c 'true | true' (each vs native, with exits)")
        try ProcessBench.run(into: &results, work: work, rounds: max(iterations / 50, 10), batches: batches)

        progress("host calls with everything on one core (a child process under taskset -c 0)")
        do {
            let oneCore = try onOneCore(.exitless, traps, count: iterations, batches: batches)
            let oneCoreExit = try onOneCore(.exit, traps, count: iterations, batches: batches)
            results.add("hostcall_exitless_1core_ns", oneCore)
            results.add("hostcall_exit_1core_ns", oneCoreExit)
            results.add("hostcall_exitless_1core_vs_exit", oneCore / oneCoreExit)
        } catch {
            results.skip("hostcall_exitless_1core_ns", "\(error)")
        }

        progress("VM creation: load + run a trivial program, vs a bare VM, vs a process")
        func freshVM() throws {
            var configuration = SandboxConfiguration()
            configuration.memorySize = 16 << 20
            let outcome = try Sandbox(elfPath: trivial, configuration: configuration).run()
            guard outcome == .exited(status: 0) else { throw ValidationError("trivial guest: \(outcome)") }
        }
        try freshVM()
        results.add("vm_create_ns", try Samples.measure(samples, freshVM))
        _ = try BareVM.create()
        results.add("vm_create_floor_ns", Samples(try (0..<samples).map { _ in try BareVM.create() }))
        results.add("process_spawn_ns", try Samples.measure(samples) { try spawnAndWait(trivial) })
        if let vm = results["vm_create_ns"], let process = results["process_spawn_ns"] { results.add("vm_create_vs_process_spawn", vm / process) }

        if !skipFork {
            try ForkBench(service: try build("service"), samples: samples, cycles: cycles)
                .run(into: &results, floor: floor, progress: progress)
        }

        progress("compute: guest vs native (\(computeRounds) rounds)")
        let computeBatches = max(3, batches / 2)
        let native = median(try (0..<computeBatches).map { _ in try timed { try spawnAndWait(compute, ["\(computeRounds)"]) } })
        let guest = median(try (0..<computeBatches).map { _ in
            try timed {
                var configuration = SandboxConfiguration()
                configuration.arguments = ["compute", "\(computeRounds)"]
                configuration.standardOutput = .discard
                _ = try Sandbox(elfPath: compute, configuration: configuration).run()
            }
        })
        results.add("compute_native_ns", native)
        results.add("compute_guest_ns", guest)
        results.add("compute_ratio", guest / native)

        try wasmtime(&results, benchSources: benchSources, work: work)

        if json {
            print(results.json(platform: platform))
        } else {
            print("platform: \(platform); medians (ns) of \(batches) batches of \(iterations) or \(samples) samples; p99 where given")
            print(results.table())
        }
    }

    /// Wasmtime's instantiate + call and call, and the ratios against them.
    private func wasmtime(_ results: inout BenchResults, benchSources: URL, work: URL) throws {
        progress("Wasmtime: instantiate + call, and call (C API, pooling allocator, InstancePre)")
        do {
            let figures = try WasmtimeBench.run(source: benchSources.appendingPathComponent("host/wasmtime_bench.c").path,
                                                work: work.path, iterations: quick ? 500 : 5000)
            for (key, value) in figures { results.add(key, value) }
            if let pooled = results["pooled_request_ns"], let wasm = results["wasmtime_instantiate_call_ns"] {
                results.add("pooled_request_vs_wasmtime", pooled / wasm)
            }
            if let parked = results["pooled_request_zero_exit_ns"], let wasm = results["wasmtime_instantiate_call_ns"] {
                results.add("zero_exit_vs_wasmtime", parked / wasm)
            }
        } catch {
            results.skip("wasmtime_instantiate_call_ns", "\(error)")
        }
    }

    /// Nanoseconds per host call of the trap guest run by `kvmsandbox run` in a child process
    /// confined to CPU 0 (`taskset -c 0`): vCPU thread, poller and all share one core.
    private func onOneCore(_ transport: HostCallTransport, _ traps: String, count: Int, batches: Int) throws -> Double {
        let taskset = "/usr/bin/taskset"
        guard FileManager.default.isExecutableFile(atPath: taskset) else { throw ValidationError("\(taskset) is missing") }
        func timedRun(_ calls: Int) throws -> Double {
            // `kvmsandbox run` registers no handler: the calls get -ENOSYS, which the guest is
            // told not to check; the round trips are the same.
            try timed { try spawnAndWait(taskset, ["-c", "0", CommandLine.arguments[0], "run", "--host-calls", transport.rawValue,
                                                   traps, "exitless", "\(calls)", "nocheck"]) }
        }
        return median(try (0..<batches).map { _ in (try timedRun(count) - timedRun(0)) / Double(count) })
    }

    private func progress(_ message: String) { printError("bench: \(message)...") }
}

/// posix_spawn + waitpid (output discarded): what isolating a request in a fresh process costs.
func spawnAndWait(_ path: String, _ arguments: [String] = []) throws {
    let status = GuestToolchain.spawn([path] + arguments, discardingOutput: true)
    guard status == 0 else { throw ValidationError("\(path) exited with status \(status)") }
}
