import Foundation
import KVMSandbox
@testable import KVMSandboxAgents
import MCP
import Testing

extension KVMTests {
    /// `kvmsandbox mcp`'s Python sessions, with the real python3 in real VMs: state kept between
    /// cells, errors as structured tracebacks, isolation between sessions, runaway and hostile
    /// cells contained. (The official MCP client drives the whole server in Scripts/mcp-acceptance.)
    @Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs /usr/bin/python3"))
    struct AgentSessions {
        static func manager(timeout: Duration = .seconds(20), memory: UInt64 = 512 << 20, sessions: Int = 4, spares: Int = 0,
                            matplotlib: Bool = false) throws -> SessionManager {
            var configuration = AgentConfiguration()
            configuration.spareSessions = spares
            configuration.preloadsMatplotlib = matplotlib
            configuration.cellTimeout = timeout
            configuration.sandbox.memorySize = memory
            configuration.maximumSessions = sessions
            configuration.outputLimit = 4096
            return try SessionManager(configuration: configuration)
        }

        @Test func aSessionKeepsItsStateAndReportsErrors() async throws {
            let manager = try Self.manager()
            var reply = try await manager.perform(.run("import json, re, sqlite3\nx = 6 * 7\nprint('set')"), in: "s")
            #expect(reply.error == nil, "\(reply)")
            #expect(reply.stdout == "set\n")
            reply = try await manager.perform(.run("x"), in: "s")
            #expect(reply.result == "42")
            reply = try await manager.perform(.run("json.dumps({'n': x}), sqlite3.connect(':memory:').execute('select 2').fetchone()[0]"), in: "s")
            #expect(reply.result == "('{\"n\": 42}', 2)")
            reply = try await manager.perform(.run("print('before')\ndef f():\n    return 1 / 0\nf()"), in: "s")
            #expect(reply.stdout == "before\n")
            #expect(reply.error?.type == "ZeroDivisionError")
            #expect(reply.error?.message == "division by zero")
            let traceback = reply.error?.traceback ?? ""
            #expect(traceback.hasPrefix("Traceback (most recent call last):\n  File \"<cell>\""), "\(traceback)")
            #expect(traceback.contains("line 3, in f") && !traceback.contains("run_cell"), "\(traceback)")
            reply = try await manager.perform(.run("x + 1"), in: "s")
            #expect(reply.result == "43", "an exception does not lose the session's state")
        }

        @Test func filesLiveInTheSessionsWorkspace() async throws {
            let manager = try Self.manager()
            var reply = try await manager.perform(.write("data/notes.txt", text: "hello\nworld\n"), in: "f")
            #expect(reply.bytes == 12 && reply.path == "data/notes.txt", "\(reply)")
            reply = try await manager.perform(.run("open('data/notes.txt').read().split()"), in: "f")
            #expect(reply.result == "['hello', 'world']")
            reply = try await manager.perform(.run("open('out.bin', 'wb').write(bytes(range(256)))"), in: "f")
            reply = try await manager.perform(.read("out.bin"), in: "f")
            #expect(reply.base64.flatMap { Data(base64Encoded: $0) } == Data((0...255).map { UInt8($0) }))
            reply = try await manager.perform(.read("data/notes.txt"), in: "f")
            #expect(reply.text == "hello\nworld\n")
            reply = try await manager.perform(.list(), in: "f")
            let paths = reply.entries?.map(\.path) ?? []
            #expect(paths.contains("data/notes.txt") && paths.contains("out.bin") && paths.contains("outputs/"), "\(paths)")
            // Escapes from the workspace, by path and by link.
            reply = try await manager.perform(.read("../etc/hostname"), in: "f")
            #expect(reply.error?.type == "ValueError", "\(reply)")
            // A link out of the workspace: the sandbox's tmpfs refuses to make it (EPERM); were it
            // made, the driver would refuse to follow it (the VM shows no host secret either way).
            for target in ["/etc", "../.."] {
                reply = try await manager.perform(.run("import os; os.symlink('\(target)', 'link')"), in: "f")
                #expect(reply.error?.type == "PermissionError", "\(reply)")
                reply = try await manager.perform(.read("link/hostname"), in: "f")
                #expect(reply.error?.type == "ValueError" || reply.error?.type == "FileNotFoundError", "\(reply)")
            }
            reply = try await manager.perform(.write("/tmp/../../x", text: "x"), in: "f")
            #expect(reply.error != nil)
        }

        @Test func commandsRunInTheSessionsWorkspace() async throws {
            let manager = try Self.manager()
            _ = try await manager.perform(.write("a.txt", text: "b\na\nc\n"), in: "c")
            var reply = try await manager.perform(.command("sort a.txt | tr a-z A-Z"), in: "c")
            #expect(reply.exitStatus == 0 && reply.stdout == "A\nB\nC\n", "\(reply)")
            reply = try await manager.perform(.command(argv: ["wc", "-l"], stdin: "1\n2\n"), in: "c")
            #expect(reply.stdout?.trimmingCharacters(in: .whitespacesAndNewlines) == "2", "\(reply)")
            reply = try await manager.perform(.command("exit 3"), in: "c")
            #expect(reply.exitStatus == 3)
        }

        @Test func sessionsDoNotSeeEachOther() async throws {
            // (With spare sessions: forks warmed up ahead of need are as fresh as new ones.)
            let manager = try Self.manager(spares: 2)
            _ = try await manager.perform(.run("secret = 'a'\nopen('mine.txt', 'w').write('a')"), in: "a")
            let reply = try await manager.perform(.run("import os\n(os.listdir('.'), 'secret' in globals())"), in: "b")
            #expect(reply.result == "(['outputs'], False)", "\(reply)")
            #expect(try await manager.perform(.run("secret"), in: "a").result == "'a'")
            // Closing forgets; the same name opens afresh.
            #expect(await manager.close("a"))
            #expect(try await manager.perform(.run("'secret' in globals()"), in: "a").result == "False")
            await #expect(throws: SessionManager.Failure.self) { try await manager.perform(.run("1"), in: "../x") }
        }

        @Test func aRunawayCellIsInterruptedAndTheSessionKeepsItsState() async throws {
            let manager = try Self.manager(timeout: .milliseconds(1500))
            _ = try await manager.perform(.run("kept = 1"), in: "r")
            // A loop, and a sleep: KeyboardInterrupt at the timeout, reported as one.
            for code in ["while True:\n    pass", "import time\ntime.sleep(100)"] {
                let started = ContinuousClock.now
                let reply = try await manager.perform(.run(code), in: "r")
                #expect(ContinuousClock.now - started < .seconds(10))
                #expect(reply.error?.type == "Timeout", "\(reply)")
                #expect(reply.error?.message.contains("keeps its variables") == true, "\(reply)")
                #expect(reply.error?.traceback?.contains("<cell>") == true)
            }
            #expect(try await manager.perform(.run("kept + 1"), in: "r").result == "2")
            // A cell that ignores the interrupt is ended a grace period later; the session
            // restarts empty and says so.
            let reply = try await manager.perform(.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"), in: "r")
            #expect(reply.error?.type == "Timeout" && reply.error?.message.contains("restarted") == true, "\(reply)")
            #expect(try await manager.perform(.run("'kept' in globals(), 1 + 1"), in: "r").result == "(False, 2)")
            #expect(await manager.counters.timeouts == 3)
        }

        @Test func hostileCellsAreContained() async throws {
            let manager = try Self.manager(memory: 256 << 20, sessions: 2)
            // Host secrets are not in the view.
            var reply = try await manager.perform(.run("open('/etc/shadow').read()"), in: "h")
            #expect(reply.error?.type == "FileNotFoundError" || reply.error?.type == "PermissionError", "\(reply)")
            // Output past the limit is cut, visibly.
            reply = try await manager.perform(.run("print('x' * 10_000_000)"), in: "h")
            #expect((reply.stdout?.count ?? 0) < 5000 && reply.stdout?.contains("truncated") == true)
            reply = try await manager.perform(.run("import os\nfor _ in range(64): os.write(1, b'y' * (1 << 20))"), in: "h")
            #expect((reply.stdout?.utf8.count ?? 0) <= 4096, "output around the driver is bounded too")
            // A memory hog gets MemoryError inside its --memory, and the session goes on.
            reply = try await manager.perform(.run("hog = bytearray(1 << 30)"), in: "h")
            #expect(reply.error?.type == "MemoryError", "\(reply)")
            #expect(try await manager.perform(.run("2 + 2"), in: "h").result == "4")
            // Forged answers and reads of the driver's input only break the session that made them.
            reply = try await manager.perform(.run("import os\nos.read(3, 10)"), in: "h")
            #expect(reply.error?.type == "SessionRestarted", "\(reply)")
            #expect(try await manager.perform(.run("3 + 3"), in: "h").result == "6")
            reply = try await manager.perform(.run("import os; os._exit(7)"), in: "h")
            #expect(reply.error?.type == "SessionExited")
            // The session limit.
            _ = try await manager.perform(.run("1"), in: "h2")
            await #expect(throws: SessionManager.Failure.self) { try await manager.perform(.run("1"), in: "h3") }
        }

        @Test func idleSessionsAreClosedAndPackagesComeFromThePythonPath() async throws {
            // A package directory as `pip install --target` makes one, preloaded into the snapshot.
            let packages = FileManager.default.temporaryDirectory.appendingPathComponent("kvmsandbox-py-\(getpid())")
            try FileManager.default.createDirectory(at: packages.appendingPathComponent("tinypkg"), withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: packages) }
            try "import time\nLOADED_AT = time.monotonic()\ndef double(x):\n    return 2 * x\n"
                .write(to: packages.appendingPathComponent("tinypkg/__init__.py"), atomically: true, encoding: .utf8)
            var configuration = AgentConfiguration()
            configuration.spareSessions = 0
            configuration.preloadsMatplotlib = false
            configuration.sandbox.memorySize = 256 << 20
            configuration.pythonPath = [packages.path]
            configuration.preload = ["tinypkg"]
            configuration.sessionIdle = .milliseconds(200)
            let manager = try SessionManager(configuration: configuration)
            var reply = try await manager.perform(.run("import sys, tinypkg\n('tinypkg' in sys.modules, tinypkg.double(21))"), in: "p")
            #expect(reply.result == "(True, 42)", "\(reply)")
            // The package directory is read-only to the session.
            reply = try await manager.perform(.run("open(tinypkg.__file__, 'a')"), in: "p")
            #expect(reply.error != nil, "\(reply)")
            #expect(await manager.openSessions == ["p"])
            try await Task.sleep(for: .milliseconds(400))
            #expect(await manager.closeIdleSessions() == ["p"])
            #expect(await manager.openSessions.isEmpty)
            // A bad preload name is refused before anything boots.
            configuration.preload = ["os; import shutil"]
            #expect(throws: SessionManager.Failure.self) { try SessionManager(configuration: configuration) }
        }

        @Test func repliesTheHostCannotReadRestartTheSession() {
            // The parser of what a (hostile) guest wrote: marker cut short, repeated, forged, or
            // followed by garbage; never a crash, never more than the limit of raw output.
            let marker = PythonDriver.marker
            var generator = SystemRandomNumberGenerator()
            let pieces: [[UInt8]] = [marker, Array(marker.prefix(5)), Array("{\"stdout\": \"x\"}".utf8), Array("{".utf8), [0xFF, 0x00, 0x1E],
                                     Array("{\"result\": 1}".utf8), Array(String(repeating: "y", count: 300).utf8), Array("null".utf8)]
            for _ in 0..<5000 {
                var output: [UInt8] = []
                for _ in 0..<Int.random(in: 0...6, using: &generator) { output += pieces.randomElement(using: &generator)! }
                if let reply = SessionReply.parse(output, limit: 64) {
                    #expect((reply.stdout?.utf8.count ?? 0) <= 64 + 300 * 6)
                }
            }
            #expect(SessionReply.parse(marker + Array("{\"result\": \"4\"}\n".utf8), limit: 64)?.result == "4")
            #expect(SessionReply.parse(Array("raw".utf8) + marker + Array("{\"stdout\": \"x\"}".utf8), limit: 64)?.stdout == "rawx")
            #expect(SessionReply.parse(marker + Array("{\"result\": 4}".utf8), limit: 64) == nil, "a type mismatch is no reply")
            #expect(SessionReply.parse(Array(marker.dropLast()), limit: 64) == nil)
        }

        @Test func figuresComeBackAsImages() async throws {
            guard FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/matplotlib") else {
                Issue.record("python3-matplotlib is not installed (.ci/run installs it)")
                return
            }
            let manager = try Self.manager(timeout: .seconds(60), matplotlib: true)
            let result = await AgentTools.call("run_python", arguments: [
                "code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')",
                "session": "plot",
            ], manager: manager)
            let images = result.content.compactMap { content -> Data? in
                if case .image(let data, "image/png", _, _) = content { return Data(base64Encoded: data) }
                return nil
            }
            #expect(images.count == 1, "\(result.content)")
            #expect(images.first?.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), "a PNG")
            #expect(result.isError == false)
        }
    }
}

extension KVMTests {
    /// `Sandbox.runUntilInputNeeded()` and `startTurn()`: an interactive program driven turn by
    /// turn in one VM (the primitive under `kvmsandbox mcp`'s sessions), with a small C guest.
    @Suite struct Turns {
        @Test func aProgramIsDrivenTurnByTurnAndKeepsItsState() throws {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["echo"]
            configuration.memorySize = 8 << 20
            configuration.standardOutput = .capture
            configuration.timeout = 10
            configuration.outputLimit = 16
            let snapshot = try Snapshot(elfPath: try Guests.build("echo-stdin"), configuration: configuration, readyAt: .firstInputRead)
            let vm = try snapshot.fork()
            for turn in ["first", "second turn", "third"] {
                vm.startTurn()
                vm.standardInput = .bytes(Array(turn.utf8))
                #expect(try vm.runUntilInputNeeded() == .ready, "paused before the read that would find no input")
                #expect(String(decoding: vm.capturedOutput(fd: 1), as: UTF8.self) == turn)
            }
            // The output limit holds per turn: without `startTurn` the bytes keep counting.
            vm.discardCapturedOutput()
            vm.standardInput = .bytes(Array("0123456789AB".utf8))
            #expect(try vm.runUntilInputNeeded() == .ready)
            #expect(vm.capturedOutput(fd: 1).count == 11, "16 bytes in all: 5 of the third turn, then 11 of these 12")
            // Empty input: the guest's read sees end of file when the run is `run()`.
            vm.startTurn()
            vm.standardInput = .empty
            #expect(try vm.run() == .exited(status: 0))
        }
    }
}
