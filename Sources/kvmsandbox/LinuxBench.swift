import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxTools

/// Linux-layer figures for `kvmsandbox bench`, each beside the same thing done natively in the
/// same run: a syscall served by the Linux layer (the trap figure `trap_syscall_ns`, getppid),
/// open + read 4 KiB + close of a small file, and busybox sha256sum of 1 MiB on stdin.
/// Runs `program` with `arguments` in a fresh sandbox (output discarded) and returns the
/// nanoseconds its run took (loading excluded); a run that does not exit 0 is an error.
func timedRun(_ program: String, _ arguments: [String], grants: [FileGrant] = []) throws -> Double {
    var configuration = SandboxConfiguration()
    configuration.arguments = [program] + arguments
    configuration.files = grants
    configuration.standardOutput = .discard
    let sandbox = try Sandbox(elfPath: program, configuration: configuration)
    let start = monotonicNanoseconds()
    let outcome = try sandbox.run()
    guard outcome == .exited(status: 0) else { throw ValidationError("\(program) \(arguments.joined(separator: " ")): \(outcome)") }
    return Double(monotonicNanoseconds() - start)
}

enum LinuxBench {
    static func run(into results: inout BenchResults, floor: Double, files: String, work: URL, rounds: Int, batches: Int) throws {
        if let syscall = results["trap_syscall_ns"] { results.add("linux_getppid_vs_floor", syscall / floor) }

        // open + read + close: (N rounds - 0 rounds) / N, in the sandbox and natively.
        let data = work.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        let file = data.appendingPathComponent("small.txt")
        try Data(repeating: 0x61, count: 4096).write(to: file)
        func sandboxed(_ count: Int) throws -> Double {
            try timedRun(files, [file.path, "\(count)"], grants: [FileGrant(hostPath: data.path)])
        }
        func native(_ count: Int) throws -> Double { try timed { try spawnAndWait(files, [file.path, "\(count)"]) } }
        let inSandbox = median(try (0..<batches).map { _ in (try sandboxed(rounds) - sandboxed(0)) / Double(rounds) })
        let natively = median(try (0..<batches).map { _ in (try native(rounds * 20) - native(0)) / Double(rounds * 20) })
        results.add("linux_open_read_close_ns", inSandbox)
        results.add("native_open_read_close_ns", natively)
        results.add("linux_open_read_close_vs_native", inSandbox / natively)

        // busybox sha256sum of 1 MiB of stdin: whole runs, sandbox vs a native process.
        let busybox = "/bin/busybox"
        guard FileManager.default.isExecutableFile(atPath: busybox) else {
            results.skip("busybox_sha256_1mib_ns", "\(busybox) is missing (apt-get install busybox-static)")
            return
        }
        let input = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let inputFile = work.appendingPathComponent("input.bin")
        try Data(input).write(to: inputFile)
        func sandboxedHash() throws {
            var configuration = SandboxConfiguration()
            configuration.arguments = [busybox, "sha256sum"]
            configuration.standardInput = .bytes(input)
            configuration.standardOutput = .discard
            let outcome = try Sandbox(elfPath: busybox, configuration: configuration).run()
            guard outcome == .exited(status: 0) else { throw ValidationError("busybox sha256sum: \(outcome)") }
        }
        func nativeHash() throws {
            let status = GuestToolchain.spawn(["/bin/sh", "-c", "\(busybox) sha256sum < \(inputFile.path) > /dev/null"])
            guard status == 0 else { throw ValidationError("native busybox sha256sum: status \(status)") }
        }
        let sandboxSamples = try Samples.measure(batches * 3, sandboxedHash)
        let nativeSamples = try Samples.measure(batches * 3, nativeHash)
        results.add("busybox_sha256_1mib_ns", sandboxSamples.median)
        results.add("native_busybox_sha256_1mib_ns", nativeSamples.median)
        results.add("busybox_sha256_1mib_vs_native", sandboxSamples.median / nativeSamples.median)
    }
}
