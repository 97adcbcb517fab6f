import Foundation
import KVMSandbox
import KVMSandboxTools
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Dynamic programs from the distribution, run unmodified: the host loads the program and its
/// PT_INTERP, and ld.so maps the libraries through the Linux layer. Output must equal a native run's.
enum DynamicPrograms {
    /// Runs `path` in a fresh sandbox with `LC_ALL=C`, output captured.
    static func run(_ path: String, _ arguments: [String], input: InputSource = .empty, grants: [FileGrant] = [],
                    memory: UInt64 = 128 << 20) throws -> (outcome: RunOutcome, stdout: String, stderr: String) {
        try #require(FileManager.default.isExecutableFile(atPath: path), "install \(path) (Scripts/setup does)")
        return try LinuxFixtures.run(path, arguments, input: input, grants: grants, environment: ["LC_ALL=C"], memory: memory)
    }

    /// python3 running `script` (written into a fresh granted directory), snapshotted at its first
    /// read of stdin; output captured.
    static func pythonSnapshot(_ name: String, script: String, memory: UInt64) throws -> Snapshot {
        let code = LinuxFixtures.scratch(name)
        try Data(script.utf8).write(to: URL(fileURLWithPath: code + "/serve.py"))
        var configuration = SandboxConfiguration()
        configuration.arguments = ["/usr/bin/python3", code + "/serve.py"]
        configuration.environment = ["LC_ALL=C"]
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        configuration.files = [FileGrant(hostPath: code)]
        configuration.memorySize = memory
        configuration.timeout = 30
        return try Snapshot(elfPath: "/usr/bin/python3", configuration: configuration, readyAt: .firstInputRead)
    }

    /// The same command run natively (a process), with `LC_ALL=C`.
    static func native(_ path: String, _ arguments: [String], input: String = "") throws -> String {
        String(decoding: try nativeBytes(path, arguments, input: input), as: UTF8.self)
    }

    /// The same command's standard output as bytes.
    static func nativeBytes(_ path: String, _ arguments: [String], input: String = "") throws -> [UInt8] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = ["LC_ALL": "C"]
        let output = Pipe(), stdin = Pipe()
        process.standardOutput = output
        process.standardInput = stdin
        process.standardError = FileHandle.nullDevice
        try process.run()
        stdin.fileHandleForWriting.write(Data(input.utf8))
        try stdin.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        // Closed now rather than whenever Foundation lets go (the leak checks count descriptors).
        try? output.fileHandleForReading.close()
        try? stdin.fileHandleForReading.close()
        return [UInt8](data)
    }
}

extension KVMTests {
    @Suite struct DynamicLoading {
        /// Each acceptance command: its output in the sandbox equals its native output and the
        /// value the issue names.
        @Test(arguments: [
            ("/usr/bin/sqlite3", [":memory:", "create table t(x); insert into t values(1),(2),(3); select sum(x) from t;"], "", "6\n"),
            ("/usr/bin/lua5.4", ["-e", "local t={} for i=1,10 do t[#t+1]=i*i end print(table.concat(t,\",\"))"], "",
             "1,4,9,16,25,36,49,64,81,100\n"),
            ("/usr/bin/jq", ["-c", ".a|map(.*2)"], "{\"a\":[1,2,3]}", "[2,4,6]\n"),
            ("/usr/bin/python3", ["-c", "import json,hashlib; print(json.dumps({\"h\": hashlib.sha256(b\"abc\").hexdigest()[:8]}))"], "",
             "{\"h\": \"ba7816bf\"}\n"),
            ("/usr/bin/luajit", ["-e", "local s=0 for i=1,1e7 do s=s+i%7 end print(s)"], "", "29999997\n"),
        ])
        func distributionProgram(_ path: String, _ arguments: [String], _ input: String, _ expected: String) throws {
            let (outcome, stdout, stderr) = try DynamicPrograms.run(path, arguments, input: .bytes(Array(input.utf8)))
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == expected)
            #expect(stdout == (try DynamicPrograms.native(path, arguments, input: input)))
        }

        /// A script from a read-only grant reads its data and writes into a writable grant; outside
        /// its grants (and the system libraries) nothing exists, and `..` does not climb out.
        @Test func pythonScriptSeesOnlyItsGrants() throws {
            let code = LinuxFixtures.scratch("py-code"), output = LinuxFixtures.scratch("py-out")
            try Data("3\n4\n5\n".utf8).write(to: URL(fileURLWithPath: code + "/numbers.txt"))
            let script = """
            import os
            total = sum(int(line) for line in open(os.path.join(os.path.dirname(__file__), "numbers.txt")))
            with open("\(output)/result.txt", "w") as f:
                f.write(f"sum={total}\\n")
            for path in ["/etc/shadow", "/etc/passwd", "\(code)/../../../etc/passwd", "/home", "/root"]:
                try:
                    open(path).read()
                    print("OPENED", path)
                except OSError as error:
                    print(type(error).__name__, error.errno)
            try:
                open("\(code)/new.txt", "w")
            except OSError as error:
                print("write to ro:", error.errno)
            print(os.path.exists("/usr/lib/python3"), os.path.exists("/etc/ld.so.cache"))
            """
            try Data(script.utf8).write(to: URL(fileURLWithPath: code + "/job.py"))
            let passwd = try Data(contentsOf: URL(fileURLWithPath: "/etc/passwd"))
            let (outcome, stdout, stderr) = try DynamicPrograms.run(
                "/usr/bin/python3", [code + "/job.py"],
                grants: [FileGrant(hostPath: code), FileGrant(hostPath: output, writable: true)])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == """
            FileNotFoundError 2
            FileNotFoundError 2
            FileNotFoundError 2
            FileNotFoundError 2
            FileNotFoundError 2
            write to ro: 30
            True True

            """)
            #expect(try String(contentsOfFile: output + "/result.txt", encoding: .utf8) == "sum=12\n")
            #expect(!FileManager.default.fileExists(atPath: code + "/new.txt"))
            #expect(try Data(contentsOf: URL(fileURLWithPath: "/etc/passwd")) == passwd)
        }

        /// A dynamic C program (gcc, no -static) crashing inside memcpy: the report names libc's
        /// frame and the program's own frames with file:line.
        @Test func crashInsideLibcIsSymbolized() throws {
            let directory = LinuxFixtures.scratch("crash")
            let source = directory + "/crash.c", program = directory + "/crash"
            try Data("""
            #include <string.h>
            #include <stdio.h>
            __attribute__((noinline)) void copy(char *to, const char *from, size_t n) { memcpy(to, from, n); }
            int main(void) {
                char buffer[256] = "data";
                puts("about to crash");
                fflush(stdout);
                copy((char *)16, buffer, sizeof buffer);
                return 0;
            }
            """.utf8).write(to: URL(fileURLWithPath: source))
            #expect(GuestToolchain.spawn(["gcc", "-g", "-O1", "-o", program, source]) == 0)
            let (outcome, stdout, _) = try DynamicPrograms.run(program, [], grants: [FileGrant(hostPath: directory)])
            #expect(stdout == "about to crash\n")
            guard case .fault(let fault) = outcome else {
                Issue.record("expected a fault, got \(outcome)")
                return
            }
            #expect(fault.vector == 14)
            let frames = fault.backtrace.frames
            #expect(frames.first?.module == "libc.so.6", "\(fault.backtrace)")
            let copy = try #require(frames.first { $0.function == "copy" }, "\(fault.backtrace)")
            #expect(copy.module == nil)
            #expect(copy.source?.file.hasSuffix("crash.c") == true)
            #expect(copy.source?.line == 3)
            #expect(frames.contains { $0.function == "main" && $0.source?.line == 8 }, "\(fault.backtrace)")
        }

        /// python3 imports its modules once, is snapshotted at its first read of stdin, and 100
        /// forks (two VMs, each reset between requests) evaluate one expression each: every
        /// result right, none sees another's state.
        @Test func pythonSnapshotServesForks() throws {
            let snapshot = try DynamicPrograms.pythonSnapshot("py-fork", script: """
            import sys, json, decimal, fractions
            seen = []
            request = sys.stdin.read()
            seen.append(request)
            print(len(seen), eval(request))
            """, memory: 128 << 20)
            let vms = [try snapshot.fork(), try snapshot.fork()]
            for index in 0..<100 {
                let vm = vms[index % 2]
                vm.standardInput = .bytes(Array("\(index) * \(index) + 1".utf8))
                let outcome = try vm.run()
                #expect(outcome == .exited(status: 0), "\(String(decoding: vm.capturedOutput(fd: 2), as: UTF8.self))")
                #expect(String(decoding: vm.capturedOutput(fd: 1), as: UTF8.self) == "1 \(index * index + 1)\n")
                try vm.reset()
            }
        }

        /// mmap hints, MAP_FIXED over the program or the host's pages, reuse after munmap and the
        /// JIT policy, from a static glibc program (Tests/Guests/memory-policy.c).
        @Test(arguments: [false, true])
        func memoryPlacementAndJITPolicy(allowJIT: Bool) throws {
            let directory = LinuxFixtures.scratch("memory-policy")
            let source = Guests.testsDirectory.deletingLastPathComponent().appendingPathComponent("Guests/memory-policy.c").path
            let program = directory + "/memory-policy"
            #expect(GuestToolchain.spawn(["gcc", "-static", "-O1", "-o", program, source], discardingOutput: true) == 0)
            var configuration = SandboxConfiguration()
            configuration.arguments = [program]
            configuration.standardOutput = .capture
            configuration.files = [FileGrant(hostPath: directory)]
            configuration.allowJIT = allowJIT
            configuration.timeout = 20
            let sandbox = try Sandbox(elfPath: program, configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            let jit = allowJIT ? "anonymous exec: mapped\nanonymous rwx: mapped\njit returns 42\n" : "anonymous exec: refused\nanonymous rwx: refused\n"
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self) == """
            free hint: there
            stack hint: elsewhere
            top hint: elsewhere
            file over code: failed errno 12
            file over stub: failed errno 12
            \(jit)reused page writable and zeroed: 1
            file MAP_FIXED over own mapping: there

            """)
            #expect(sandbox.refusedExecutableMappings == (allowJIT ? 0 : 2))
        }

        /// Links that leave their grant are followed in the guest's namespace: into another grant
        /// they work, to anywhere else they are ENOENT, and a loop is ELOOP.
        @Test func symbolicLinksFollowTheGuestsNamespace() throws {
            let first = LinuxFixtures.scratch("links-a"), second = LinuxFixtures.scratch("links-b")
            try Data("from b\n".utf8).write(to: URL(fileURLWithPath: second + "/file.txt"))
            let manager = FileManager.default
            try manager.createSymbolicLink(atPath: first + "/to-b", withDestinationPath: second + "/file.txt")
            try manager.createSymbolicLink(atPath: first + "/dir-b", withDestinationPath: second)
            try manager.createSymbolicLink(atPath: first + "/out", withDestinationPath: "/etc/passwd")
            try manager.createSymbolicLink(atPath: first + "/loop1", withDestinationPath: first + "/loop2")
            try manager.createSymbolicLink(atPath: first + "/loop2", withDestinationPath: first + "/loop1")
            let grants = [FileGrant(hostPath: first), FileGrant(hostPath: second)]
            func cat(_ name: String, _ grants: [FileGrant]) throws -> String {
                let (_, stdout, stderr) = try LinuxFixtures.run("/bin/busybox", ["cat", first + "/" + name], grants: grants)
                return stdout + stderr
            }
            #expect(try cat("to-b", grants) == "from b\n")
            #expect(try cat("dir-b/file.txt", grants) == "from b\n")
            #expect(try cat("out", grants) == "cat: can't open '\(first)/out': No such file or directory\n")
            #expect(try cat("loop1", grants) == "cat: can't open '\(first)/loop1': Too many levels of symbolic links\n")
            let (_, link, _) = try LinuxFixtures.run("/bin/busybox", ["readlink", first + "/to-b"], grants: grants)
            #expect(link == second + "/file.txt\n")
            // Only one of the grants: the link into the other one leads nowhere.
            #expect(try cat("to-b", [FileGrant(hostPath: first)]) == "cat: can't open '\(first)/to-b': No such file or directory\n")
        }

        /// coreutils' ls uses statx and the xattr calls; /proc/self/fd lists and names descriptors.
        @Test func statxXattrsAndProcSelfFd() throws {
            let (outcome, stdout, stderr) = try DynamicPrograms.run("/usr/bin/ls", ["-ln", LinuxFixtures.data + "/fruit.txt"],
                                                                    grants: [FileGrant(hostPath: LinuxFixtures.data)])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout.hasPrefix("-rw-r--r-- 1 0 0 20 "))
            #expect(stderr.isEmpty)
            let (_, listing, _) = try LinuxFixtures.run("/bin/busybox", ["ls", "/proc/self/fd"])
            #expect(listing == "0\n1\n2\n")
            let (_, link, _) = try LinuxFixtures.run("/bin/busybox", ["readlink", "/proc/self/fd/0"], input: .bytes([]))
            #expect(link == "pipe:[0]\n")
        }

        /// Without the default grants a dynamic program cannot even find its loader: a clear error.
        @Test func withoutSystemLibrariesTheLoaderIsMissing() throws {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/jq"]
            configuration.systemLibraries = false
            configuration.systemView = false
            #expect {
                try Sandbox(elfPath: "/usr/bin/jq", configuration: configuration)
            } throws: { error in
                "\(error)".contains("dynamic loader") && "\(error)".contains("cannot be opened")
            }
        }
    }
}
