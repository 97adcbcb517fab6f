import Dispatch
import Foundation
import KVMSandbox
import KVMSandboxTools
import Testing

extension KVMTests {
    /// The async pools as an embedder's server uses them: guests run on host threads of their
    /// own (the cooperative pool never blocks on a guest), a pool of capacity N runs N VMs at
    /// once, and cancelling a task stops its guest.
    @Suite struct AsyncEmbedding {
        /// Nanoseconds of the monotonic clock.
        static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

        @Test func guestsDoNotBlockTheCooperativePool() async throws {
            // Four guests spinning into a 0.5 s timeout, beside a task that ticks every 10 ms.
            let pool = try SandboxPool(snapshot: try Snapshots.snapshot(timeout: 0.5), capacity: 4)
            let started = Self.now()
            let lateness = try await withThrowingTaskGroup(of: UInt64.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        let outcome = try await pool.withSandbox { vm in try vm.call("spin") }
                        guard case .timedOut = outcome else { Issue.record("expected a timeout, got \(outcome)"); return 0 }
                        return 0
                    }
                }
                group.addTask {
                    var worst: UInt64 = 0
                    while Self.now() - started < 600_000_000 {
                        let before = Self.now()
                        try await Task.sleep(nanoseconds: 10_000_000)
                        worst = max(worst, (Self.now() - before) &- 10_000_000)
                    }
                    return worst
                }
                return try await group.reduce(0) { max($0, $1) }
            }
            // Blocking would stall the ticks for a whole guest run (>= 500 ms); the goal is 20 ms
            // (measured in the note); the bound here leaves room for a loaded CI machine.
            #expect(lateness < 150_000_000, "the heartbeat was late by \(lateness / 1_000_000) ms")
            #expect(pool.counts.total == 4, "a pool of capacity 4 ran \(pool.counts.total) VMs")
        }

        @Test func cancellingTheTaskStopsItsGuest() async throws {
            let pool = try SandboxPool(snapshot: try Snapshots.snapshot(timeout: 20), capacity: 1)
            // The request's value is the outcome and when the guest stopped (before the reset).
            let request = Task { try await pool.withSandbox { vm in (try vm.call("spin"), Self.now()) } }
            try await Task.sleep(nanoseconds: 200_000_000)
            let cancelled = Self.now()
            request.cancel()
            let (outcome, stopped) = try await request.value
            let took = stopped &- cancelled
            guard case .interrupted = outcome else { Issue.record("expected .interrupted, got \(outcome)"); return }
            #expect(took < 50_000_000, "the guest stopped \(took / 1_000_000) ms after the cancellation")
            // The VM was reset and serves the next request; no request is left over.
            #expect(try await pool.withSandbox { vm in try vm.call("add", 2, 3) } == .returned(5))
            #expect(pool.counts == (1, 1))
        }

        @Test func handlersRegisteredWhileBootingReachEveryFork() throws {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["service"]
            configuration.standardOutput = .capture
            let snapshot = try Snapshot(elfPath: try Guests.build("service"), configuration: configuration) { vm in
                try vm.register(HostCallNumber.firstUserNumber) { call in Int64(call[0] + 1) }
            }
            #expect(snapshot.handlers.keys.sorted() == [HostCallNumber.firstUserNumber])
            for request in 0..<3 {
                let fork = try snapshot.fork()
                #expect(try fork.call("ask_host", .integer(UInt64(40 + request))) == .returned(UInt64(41 + request)))
            }
            // A fork may still replace one.
            let fork = try snapshot.fork()
            try fork.register(HostCallNumber.firstUserNumber) { call in Int64(call[0] * 10) }
            #expect(try fork.call("ask_host", .integer(4)) == .returned(40))
        }

        @Test func typedCallsRoundTripEachSupportedType() throws {
            let vm = try Snapshots.snapshot().fork()
            let sum: Int64 = try vm.call("add", Int64(-5), Int64(3))
            #expect(sum == -2)
            let wide: UInt64 = try vm.call("add", UInt64.max, UInt64(0))
            #expect(wide == UInt64.max)
            let int: Int = try vm.call("add", 40, 2)
            #expect(int == 42)
            let narrow: Int32 = try vm.call("add", Int32(-7), Int32(0))
            #expect(narrow == -7)
            let unsigned: UInt32 = try vm.call("add", UInt32(7), UInt32(1))
            #expect(unsigned == 8)
            let truth: Bool = try vm.call("add", true, false)
            #expect(truth)
            let length: Int = try vm.call("say", "typed hello")
            #expect(length == 11)
            let bytes: Int64 = try vm.call("sum_bytes", [UInt8]([1, 2, 3, 250]), 4)
            #expect(bytes == 256)

            // A call that does not return is a typed error carrying the outcome.
            do {
                let _: Int64 = try vm.call("crash")
                Issue.record("a crashing call returned")
            } catch {
                guard case .callDidNotReturn(function: "crash", let outcome) = error else { Issue.record("\(error)"); return }
                #expect(outcome.fault?.vector == 14)
            }
            try vm.reset()
            #expect(throws: SandboxError.noSuchFunction("nope")) { let _: Int = try vm.call("nope") }
        }

        @Test func typedHostFunctionsDecodeTheirParameters() throws {
            let vm = try Snapshots.snapshot().fork()
            try vm.register(HostCallNumber.firstUserNumber + 1) { (text: String, times: Int) -> Int in
                text == "abc" ? text.utf8.count * times : -1
            }
            #expect(try vm.call("ask_host_text", "abc", 5) as Int == 15)
            // Hostile words: a bad address is -EFAULT, a huge length -E2BIG; neither reaches the handler's body.
            #expect(try vm.call("ask_host_raw", 0x10, 3, 1) as Int64 == -Int64(HostCallErrno.EFAULT))
            #expect(try vm.call("ask_host_raw", 0x10, UInt64.max, 1) as Int64 == -Int64(HostCallErrno.E2BIG))

            // Bytes, Bool and every integer width, and too many words refused at registration.
            try vm.register(HostCallNumber.firstUserNumber + 1) { (bytes: [UInt8], flag: Bool) -> UInt32 in
                UInt32(bytes.reduce(0) { $0 + Int($1) }) + (flag ? 1000 : 0)
            }
            #expect(try vm.call("ask_host_text", "ab", 1) as Int == 97 + 98 + 1000)
            #expect(throws: SandboxError.self) {
                try vm.register(HostCallNumber.firstUserNumber + 2) { (a: String, b: String, c: String, d: Int) in a.count + b.count + c.count + d }
            }
            try vm.register(HostCallNumber.firstUserNumber) { (a: Int32, b: UInt64) -> Int64 in Int64(a) + Int64(b) }
            #expect(try vm.call("ask_host", Int64(-3)) as Int64 == -3)

            // Codable values as JSON text; text of another shape is -EINVAL before the body runs.
            struct Order: Decodable, Sendable { let item: String; let count: Int }
            try vm.register(HostCallNumber.firstUserNumber + 1) { (order: JSONArgument<Order>, times: Int) -> Int in
                order.value.item == "tea" ? order.value.count * times : -1
            }
            #expect(try vm.call("ask_host_text", #"{"item": "tea", "count": 3}"#, 2) as Int == 6)
            for bad in [#"{"item": "tea"}"#, "not json", #"{"item": 1, "count": 2}"#, ""] {
                #expect(try vm.call("ask_host_text", bad, 2) as Int64 == -Int64(HostCallErrno.EINVAL), "\(bad)")
            }
        }

        @Test func programsAreFoundAsAShellAndTheKernelWould() throws {
            // A name in the search path, run through Sandbox(program), output captured by default.
            let python = try Program.lookup("python3", arguments: ["-c", "print(6 * 7)"], searchPath: "/nonexistent:/usr/bin")
            #expect(python.executable == "/usr/bin/python3" && python.arguments == ["/usr/bin/python3", "-c", "print(6 * 7)"])
            var configuration = SandboxConfiguration()
            configuration.timeout = 20
            let sandbox = try Sandbox(python, configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self) == "42\n")

            // A script: its interpreter through `#!/usr/bin/env`, the script granted read-only.
            let directory = Guests.outputDirectory.appendingPathComponent("program-\(UInt32.random(in: 0...UInt32.max))")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let script = directory.appendingPathComponent("hello.py").path
            try "#!/usr/bin/env python3\nimport sys\nprint('script', sys.argv[1:])\n".write(toFile: script, atomically: true, encoding: .utf8)
            chmod(script, 0o755)
            let program = try Program.lookup(script, arguments: ["a"], searchPath: "/usr/bin")
            #expect(program.executable == "/usr/bin/python3" && program.arguments == ["/usr/bin/python3", script, "a"])
            #expect(program.scripts == [script])
            let run = try Sandbox(program, configuration: configuration)
            #expect(try run.run() == .exited(status: 0))
            #expect(String(decoding: run.capturedOutput(fd: 1), as: UTF8.self) == "script ['a']\n")

            // What a shell says: 127 not found, 126 not executable; nesting past Linux's limit.
            #expect(throws: Program.Problem.self) { try Program.lookup("no-such-program-here", searchPath: "/usr/bin") }
            do { _ = try Program.lookup("no-such-program-here", searchPath: "/usr/bin") } catch { #expect(error.status == 127) }
            do { _ = try Program.lookup(directory.path) } catch { #expect(error.status == 126) }
            var previous = script
            for level in 0..<5 {
                let next = directory.appendingPathComponent("nest\(level)").path
                try "#!\(previous)\n".write(toFile: next, atomically: true, encoding: .utf8)
                previous = next
            }
            do { _ = try Program.lookup(previous); Issue.record("deep nesting was accepted") } catch { #expect(error.status == 126) }
        }

        @Test func anInterruptBeforeARunStopsItAndAResetForgetsIt() throws {
            let vm = try Snapshots.snapshot().fork()
            vm.interruptHandle.interrupt()
            guard case .interrupted = try vm.call("spin") else { Issue.record("the call was not interrupted"); return }
            try vm.reset()
            #expect(try vm.call("add", 1, 1) == .returned(2))
            vm.interruptHandle.interrupt()
            try vm.reset()
            #expect(!vm.interruptHandle.isRequested)
            #expect(try vm.call("add", 2, 2) == .returned(4))
        }
    }
}
