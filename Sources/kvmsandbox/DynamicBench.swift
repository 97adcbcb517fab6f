import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxTools

/// Dynamic programs from the distribution in `kvmsandbox bench`, each beside the same thing done
/// natively in the same run: start-up of python3, sqlite3 and lua5.4 (a fresh sandbox vs a
/// process, with the system calls each makes), a python3 request served by a reset fork of a
/// snapshot taken after its imports vs spawning `python3 -c`, and the resident memory of idle forks.
enum DynamicBench {
    static func run(into results: inout BenchResults, work: URL, batches: Int) throws {
        let starts = [
            ("python3_start", "/usr/bin/python3", ["-c", "pass"]),
            ("sqlite3_select1", "/usr/bin/sqlite3", [":memory:", "select 1"]),
            ("lua_start", "/usr/bin/lua5.4", ["-e", ""]),
        ]
        for (key, path, arguments) in starts {
            guard FileManager.default.isExecutableFile(atPath: path) else {
                results.skip("\(key)_ns", "\(path) is missing (Scripts/setup installs it)")
                continue
            }
            var calls = 0
            let sandboxed = try Samples.measure(batches * 3) {
                let sandbox = try Sandbox(elfPath: path, configuration: configuration([path] + arguments))
                let outcome = try sandbox.run()
                guard outcome == .exited(status: 0) else { throw ValidationError("\(path): \(outcome)") }
                calls = sandbox.systemCallCounts.values.reduce(0, +)
            }
            // The same with every system call by exit (the default, automatic, posts them to
            // the polling thread where this process has two CPUs).
            let byExit = try Samples.measure(batches * 3) {
                var configuration = configuration([path] + arguments)
                configuration.systemCallTransport = .exit
                let outcome = try Sandbox(elfPath: path, configuration: configuration).run()
                guard outcome == .exited(status: 0) else { throw ValidationError("\(path): \(outcome)") }
            }
            let native = try Samples.measure(batches * 3) { try spawnAndWait(path, arguments) }
            results.add("\(key)_exit_ns", byExit.median)
            results.add("\(key)_exitless_vs_exit", sandboxed.median / byExit.median)
            results.add("\(key)_ns", sandboxed.median)
            results.add("native_\(key)_ns", native.median)
            results.add("\(key)_vs_native", sandboxed.median / native.median)
            results.add("\(key)_syscalls", Double(calls))
        }
        try pooledPython(into: &results, work: work, batches: batches)
    }

    /// A sandbox configuration for a dynamic program, output discarded.
    static func configuration(_ arguments: [String]) -> SandboxConfiguration {
        var configuration = SandboxConfiguration()
        configuration.arguments = arguments
        configuration.environment = ["LC_ALL=C"]
        configuration.standardOutput = .discard
        configuration.standardError = .discard
        configuration.memorySize = 256 << 20
        return configuration
    }

    /// python3 with json and hashlib imported, snapshotted at its first read of stdin; each
    /// request is a fork's run on its own stdin and a reset. Against spawning python3 natively.
    static func pooledPython(into results: inout BenchResults, work: URL, batches: Int) throws {
        let python = "/usr/bin/python3"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            results.skip("python_pooled_request_ns", "\(python) is missing")
            return
        }
        let directory = work.appendingPathComponent("python")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = directory.appendingPathComponent("serve.py")
        // The handler ends with os._exit, as a request handler would: a normal exit runs Python's
        // finalization, which writes to most of the heap (python_pooled_request_dirty_pages
        // says how much a request dirties; BENCHMARKS.md has both figures).
        let exit = ProcessInfo.processInfo.environment["KVMSANDBOX_BENCH_PYTHON_FINALIZE"] == nil
            ? "sys.stdout.flush(); os._exit(0)\n" : ""
        try Data("import os, sys, json, hashlib\nprint(json.dumps(eval(sys.stdin.read())))\n\(exit)".utf8).write(to: script)
        var configuration = configuration([python, script.path])
        configuration.files = [FileGrant(hostPath: directory.path)]
        let snapshot = try Snapshot(elfPath: python, configuration: configuration, readyAt: .firstInputRead)
        let vm = try snapshot.fork()
        var counter = 0
        let pooled = try Samples.measure(batches * 20) {
            counter += 1
            vm.standardInput = .bytes(Array("[\(counter), \(counter) * 2]".utf8))
            let outcome = try vm.run()
            guard outcome == .exited(status: 0) else { throw ValidationError("pooled python: \(outcome)") }
            try vm.reset()
        }
        let spawned = try Samples.measure(batches * 3) {
            try spawnAndWait(python, ["-c", "import sys, json, hashlib; print(json.dumps(eval('[1, 1 * 2]')))"])
        }
        results.add("python_pooled_request_ns", pooled.median)
        results.add("python_pooled_request_dirty_pages", Double(vm.statistics.pagesRestoredByLastReset))
        results.add("native_python_spawn_ns", spawned.median)
        results.add("python_spawn_vs_pooled_request", spawned.median / pooled.median)
        results.add("python_snapshot_used_kib", Double(snapshot.usedBytes / 1024))

        // Resident memory of idle forks: this process's RSS before and after making 32 of them.
        let before = ProcessResources.residentBytes
        let forks = try (0..<32).map { _ in try snapshot.fork() }
        let after = ProcessResources.residentBytes
        results.add("python_idle_fork_rss_kib", Double(max(0, after - before)) / Double(forks.count) / 1024)
    }
}
