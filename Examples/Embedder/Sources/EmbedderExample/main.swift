// An embedder of KVMSandbox doing what a server that runs untrusted code does:
//   1. run an unmodified python3 (the default read-only view of /usr) and capture its output;
//   2. give a plugin a typed host function it calls;
//   3. snapshot the plugin once and serve 100 concurrent requests from a pool of forks;
//   4. survive a fault (with its backtrace), a runaway loop (timeout) and a cancelled request.
// Usage: embedder-example PLUGIN_ELF   (kvmsandbox cc -O2 -o plugin.elf Examples/Embedder/plugin.c)
import KVMSandbox

#if canImport(Glibc)
import Glibc
#endif

guard CommandLine.arguments.count == 2 else {
    print("usage: embedder-example PLUGIN_ELF   (kvmsandbox cc -O2 -o plugin.elf Examples/Embedder/plugin.c)")
    exit(2)
}
let plugin = CommandLine.arguments[1]

// 1. python3 as Debian ships it: output captured, a deadline.
var python = SandboxConfiguration()
python.arguments = ["/usr/bin/python3", "-c", "import sys; print(sum(range(10)), sys.platform)"]
python.standardOutput = .capture
python.timeout = 20
let interpreter = try Sandbox(elfPath: "/usr/bin/python3", configuration: python)
let ran = try interpreter.run()
print("1. python3: \(ran), stdout \(String(decoding: interpreter.capturedOutput(fd: 1), as: UTF8.self).debugDescription)")

// 2. and 3. A typed host function, a snapshot, 100 requests from a pool with a task group.
var configuration = SandboxConfiguration()
configuration.timeout = 0.5  // per request: a runaway plugin is stopped
let snapshot = try Snapshot(elfPath: plugin, configuration: configuration)
let pool = try SandboxPool(snapshot: snapshot, capacity: 4) { vm in
    try vm.register(HostCallNumber.firstUserNumber) { (name: String, call: Int) -> Int in
        name.utf8.count * 100 + call  // `call` is the plugin's own counter: 1 in every fresh fork
    }
}
let answers = try await withThrowingTaskGroup(of: Int.self) { group in
    for request in 0..<100 {
        group.addTask { try await pool.withSandbox { vm in try vm.call("greet", "request \(request)") as Int } }
    }
    var answers: [Int] = []
    for try await answer in group { answers.append(answer) }
    return answers
}
let fresh = answers.allSatisfy { $0 % 100 == 1 }
print("2-3. \(answers.count) requests, every one from a fresh fork: \(fresh); \(pool.statistics.requests) served by \(pool.counts.total) VMs")

// 4. A fault, a timeout and a cancellation: each an answer, never a crash of this process.
do {
    _ = try await pool.withSandbox { vm in try vm.call("crash") as Int }
} catch SandboxError.callDidNotReturn(let function, let outcome) {
    print("4. \(function): \(outcome)")
    for frame in outcome.fault?.backtrace.frames.prefix(3) ?? [] { print("     \(frame)") }
}
let runaway = try await pool.withSandbox { vm in try vm.call("spin") }
print("4. spin: \(runaway)")
let request = Task { try await pool.withSandbox { vm in try vm.call("spin") } }
try await Task.sleep(for: .milliseconds(50))
request.cancel()
print("4. cancelled: \(try await request.value)")
let after: Int = try await pool.withSandbox { vm in try vm.call("greet", "after") }
print("4. the pool serves on: \(after == 501)")
exit(ran == .exited(status: 0) && fresh && after == 501 ? 0 : 1)
