// The Swift snippets of README.md, compiled here: a snippet that stops compiling fails the
// build, and `ReadmeSnippetTests` fails when the README and this file differ. Each snippet sits
// between `// README snippet N` and `// end`, indented by four spaces, inside a function that
// declares what the text takes from its context. Never called: compiling is the test.
import Foundation
import KVMSandbox
import KVMSandboxServer
import Logging
import ServiceLifecycle

@available(*, deprecated, message: "compiled, never called")
private func readmeRunOutcome() throws {
    // README snippet 1

    var configuration = SandboxConfiguration()
    configuration.memorySize = 32 << 20
    configuration.timeout = 1.5
    configuration.arguments = ["prog", "input"]
    configuration.standardOutput = .capture          // or .fileDescriptor(fd), .discard

    let sandbox = try Sandbox(elfPath: "prog.elf", configuration: configuration)
    try sandbox.register(0x1000) { call in            // host call 0x1000: (buffer, length) -> sum of bytes
        let bytes = try call.memory.read(call[0], count: Int(call[1]))   // checked: a bad pointer -> -EFAULT
        return Int64(bytes.reduce(0) { $0 + Int($1) })
    }
    switch try sandbox.run() {
    case .exited(let status): print("exit", status, sandbox.capturedOutput(fd: 1).count, "bytes of output")
    case .fault(let fault): print(fault)              // vector, error code, CR2, registers, function+offset
    case let other: print(other)                      // .signaled, .timedOut, .deadlocked, ...
    }
    // end
}

@available(*, deprecated, message: "compiled, never called")
private func readmeTypedFunctions(sandbox: Sandbox, vm: Sandbox) throws {
    // README snippet typed functions
    try sandbox.register(0x1001) { (text: String, times: Int) -> Int in  // guest: ks_hostcall(0x1001, s, strlen(s), n, 0, 0, 0)
        text.utf8.count * times                                          // a String or [UInt8] takes two words: address, length
    }
    let sum: Int64 = try vm.call("add", 2, 40)                           // a fork's guest function, typed
    let length = try vm.call("say", "hello") as Int32                    // Strings go in as C strings, [UInt8] as bytes
    // end
    _ = (sum, length)
}

@available(*, deprecated, message: "compiled, never called")
private func readmeExceptions(sandbox: Sandbox) {
    // README snippet 2
    sandbox.onException { fault, registers in       // fault: vector, error code, CR2, backtrace
        guard fault.vector == 6 else { return .stop } // .stop ends the run with .fault(fault)
        registers.rax = 1234; registers.rip += 2      // emulate the 2-byte ud2, then resume
        return .resume
    }
    // end
}

@available(*, deprecated, message: "compiled, never called")
private func readmeSnapshots(request: [UInt8]) async throws {
    // README snippet 3
    let snapshot = try Snapshot(elfPath: "service.elf")          // load, run main() to ks_ready(), copy it
    let vm = try snapshot.fork()                                   // a new VM over a copy-on-write mapping
    let outcome = try vm.call("handle", .bytes(request), .integer(UInt64(request.count)))  // .returned(rax)
    try vm.reset()                                                 // back to the snapshot: only dirtied pages are copied

    let pool = try SandboxPool(snapshot: snapshot, capacity: 4) { vm in        // set-up of each new fork
        try vm.register(0x1000) { call in Int64(call[0] &* 2) }                 // (a @Sendable closure)
    }
    let result = try await pool.withSandbox { vm in try vm.call("handle", 42) }   // take, call, reset, return
    // end
    _ = (outcome, result)
}

@available(*, deprecated, message: "compiled, never called")
private func readmeParked(snapshot: Snapshot) async throws {
    // README snippet 4
    let parked = try snapshot.parked(ParkingConfiguration(arenaSize: 64 << 10))  // derive once
    let vm = try ParkedSandbox(snapshot: parked)             // its vCPU thread starts, idle in the stub
    let add = try vm.function(named: "add")                  // resolved once, not per call
    let outcome = try vm.call(add, 1, 2)                     // .returned(3): no VM exit, reset included

    let pool = try ParkedPool(snapshot: parked, capacity: 2) // N parked VMs for N cores
    let result = try await pool.call(add, 40, 2)
    // end
    _ = (outcome, result)
}

@available(*, deprecated, message: "compiled, never called")
private func readmeServer(configuration: SandboxConfiguration, acceptedFD: Int32, logger: Logger) async throws {
    var configuration = configuration
    // README snippet 5
    let server = try FunctionServer(program: "/usr/bin/python3", configuration: configuration, workers: 4, requestTimeout: 2)
    let answer = try await server.handle(Array(#"{"n": 7}"#.utf8))   // .status, .body (stdout), .log (stderr), .outcome
    try await server.serve(host: "127.0.0.1", port: 8080)           // until cancelled

    configuration.acceptsConnections = true
    let snapshot = try Snapshot(elfPath: "/usr/bin/python3", configuration: configuration, readyAt: .connectionWait)
    try snapshot.write(to: "site.snap")                             // Snapshot(contentsOf:) elsewhere
    let sockets = try SocketServer(snapshot: snapshot, workers: 4, connectionTimeout: 10)
    _ = try sockets.serve(connection: acceptedFD, in: try snapshot.fork())   // your own accept loop, or:
    try await ServiceGroup(services: [ServingService { try await sockets.serve(host: "0.0.0.0", port: 8080) }],
                           gracefulShutdownSignals: [.sigterm], logger: logger).run()
    // end
    _ = answer
}

@available(*, deprecated, message: "compiled, never called")
private func readmeFirstInputRead() throws {
    // README snippet 6
    var configuration = SandboxConfiguration()
    configuration.arguments = ["/usr/bin/python3", "/srv/serve.py"]   // imports, then sys.stdin.read()
    configuration.files = [FileGrant(hostPath: "/srv")]
    configuration.standardOutput = .capture
    let snapshot = try Snapshot(elfPath: "/usr/bin/python3", configuration: configuration, readyAt: .firstInputRead)
    let vm = try snapshot.fork()
    vm.standardInput = .bytes(Array("6 * 7".utf8))
    _ = try vm.run()                      // prints 42
    try vm.reset()                        // back to the snapshot, for the next request
    // end
}
