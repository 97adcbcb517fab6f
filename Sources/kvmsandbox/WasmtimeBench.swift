import ArgumentParser
import Foundation

/// The Wasmtime figures: `Guest/bench/host/wasmtime_bench.c` compiled with the system C compiler
/// and run against the libwasmtime.so that `pip install wasmtime` ships (or `$WASMTIME_LIB`).
enum WasmtimeBench {
    static func library() throws -> String {
        if let path = ProcessInfo.processInfo.environment["WASMTIME_LIB"] { return path }
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", "-c", "import wasmtime, os; print(os.path.dirname(wasmtime.__file__))"]
        let pipe = Pipe()
        python.standardOutput = pipe
        python.standardError = FileHandle.nullDevice
        try python.run()
        python.waitUntilExit()
        let directory = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let path = directory + "/linux-x86_64/_libwasmtime.so"
        guard python.terminationStatus == 0, FileManager.default.fileExists(atPath: path) else {
            throw ValidationError("Wasmtime is not installed (pip install wasmtime, or set WASMTIME_LIB)")
        }
        return path
    }

    /// wasmtime_instantiate_call_ns, its p99, and wasmtime_call_ns.
    static func run(source: String, work: String, iterations: Int) throws -> [(String, Double)] {
        let lib = try library()
        let binary = work + "/wasmtime_bench"
        try spawnAndWait("/usr/bin/cc", ["-O2", "-o", binary, source, "-ldl"])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [lib, "\(iterations)"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        process.waitUntilExit()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard process.terminationStatus == 0 else { throw ValidationError("wasmtime_bench failed: \(output)") }
        var values: [String: Double] = [:]
        for field in output.split(whereSeparator: \.isWhitespace) {
            let parts = field.split(separator: "=")
            if parts.count == 2, let value = Double(parts[1]) { values[String(parts[0])] = value }
        }
        guard let instantiate = values["instantiate_call_ns"], let p99 = values["instantiate_call_p99_ns"],
              let call = values["call_ns"] else { throw ValidationError("wasmtime_bench printed \(output)") }
        return [("wasmtime_instantiate_call_ns", instantiate), ("wasmtime_instantiate_call_p99_ns", p99), ("wasmtime_call_ns", call)]
    }
}
