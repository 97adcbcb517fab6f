import Foundation
import KVMSandbox
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The CLI run as a process, from the build the tests use.
enum CLI {
    /// The CLI built beside this test binary (debug or release, whichever `swift test` built),
    /// else the debug build.
    static let path: String = {
        let here = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "")
        let sibling = here.deletingLastPathComponent().appendingPathComponent("kvmsandbox").path
        if FileManager.default.isExecutableFile(atPath: sibling) { return sibling }
        return Guests.repository.appendingPathComponent(".build/debug/kvmsandbox").path
    }()

    /// Runs the CLI with `arguments`; its status and what it printed (stdout and stderr together).
    /// `executable`: another copy of the CLI (default: the build's); `directory`: the working
    /// directory to start it in (default: the test's).
    static func run(_ arguments: [String], environment: [String: String] = [:], executable: String? = nil,
                    directory: String? = nil) throws -> (status: Int32, output: String) {
        try #require(FileManager.default.isExecutableFile(atPath: path), "build the CLI first (swift build)")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable ?? path)
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

extension KVMTests {
    /// The CLI as people use it (the CLI issue's "Broken" items this session reached).
    @Suite struct CommandLine {
        /// `serve --help`, `snapshot -o f --help` and `cc --help` show this tool's help (they
        /// once booted a program named `--help`, or printed gcc's); an unknown option before
        /// `--` is a usage error (64); `--version` says the version and the snapshot format.
        @Test func helpUnknownOptionsAndVersion() throws {
            for arguments in [["serve", "--help"], ["serve", "-h"], ["snapshot", "-o", "f", "--help"], ["cc", "--help"]] {
                let (status, output) = try CLI.run(arguments)
                #expect(status == 0 && output.contains("OVERVIEW"), "\(arguments): \(status) \(output.prefix(200))")
            }
            let (status, output) = try CLI.run(["serve", "--bogus", "--", "/usr/bin/python3", "x"])
            #expect(status == 64 && output.contains("unknown option --bogus"))
            let version = try CLI.run(["--version"])
            #expect(version.status == 0 && version.output.contains("snapshot format \(Snapshot.fileFormatVersion)"))
        }

        /// `mcp` refuses, before booting anything, options that would expose code execution or
        /// cannot work: listening beyond loopback without a token, a token without --listen,
        /// nonsense limits and module names.
        @Test func mcpRefusesUnsafeOrImpossibleOptions() throws {
            for (arguments, says) in [(["mcp", "--listen", "0.0.0.0:8765"], "--token-file"),
                                      (["mcp", "--token-file", "/dev/null"], "--token-file is for --listen"),
                                      (["mcp", "--max-sessions", "0"], "--max-sessions"),
                                      (["mcp", "--timeout", "-1"], "timeout"),
                                      (["mcp", "--preload", "os;import shutil"], "is not a module name")] {
                let (status, output) = try CLI.run(arguments)
                #expect(status == 64 && output.contains(says), "\(arguments): \(status) \(output.prefix(300))")
            }
            let (status, output) = try CLI.run(["mcp", "--help"])
            #expect(status == 0 && output.contains("run_python"))
        }

        /// A busy port is reported before the program boots, in one plain line (status 125).
        @Test func aBusyPortIsFoundBeforeBooting() throws {
            let (listener, port) = try #require(SocketPrograms.localListener())
            defer { close(listener) }
            let started = Date()
            let (status, output) = try CLI.run(["serve", "--listen", "127.0.0.1:\(port)", "--", "/usr/bin/python3", "-c", "import time; time.sleep(30)"])
            #expect(status == ExitStatus.sandboxError)
            #expect(output.contains("cannot listen on 127.0.0.1:\(port): the address is already in use"))
            #expect(Date().timeIntervalSince(started) < 10)
        }

        /// Deny by default, said once: a failed run names the paths outside the grants that the
        /// host has, with the flag that would show each; a `#!` script is named as one.
        @Test func refusedPathsAndScriptsAreExplained() throws {
            let directory = LinuxFixtures.scratch("denied")
            try Data("s".utf8).write(to: URL(fileURLWithPath: directory + "/secret"))
            let (status, output) = try CLI.run(["run", "--no-default-tmpfs", "/usr/bin/python3", "-c", "open('\(directory)/secret')"])
            #expect(status == 1)
            #expect(output.contains("outside its grants that exist on the host: \(directory)/secret (--ro \(directory)/secret)"), "\(output)")
            // Under the default tmpfs (the scratch directory may be in /tmp) the hint is the same;
            // credentials are never suggested as a grant.
            let hidden = try CLI.run(["run", "/bin/cat", directory + "/secret", "/etc/shadow"])
            #expect(hidden.status == 1)
            #expect(hidden.output.contains("\(directory)/secret (--ro \(directory)/secret)"), "\(hidden.output)")
            #expect(hidden.output.contains("/etc/shadow (credentials: withheld)"), "\(hidden.output)")
        }

        /// A `#!` script runs as execve runs it: its interpreter with the line's optional
        /// argument, the script's path and its arguments (the script readable by the guest
        /// without a grant); `#!/usr/bin/env NAME` finds NAME in PATH; a loop of interpreters
        /// stops at Linux's nesting limit (ELOOP) with 126.
        @Test func scriptsRunTheirInterpreter() throws {
            let directory = LinuxFixtures.scratch("scripts")
            func script(_ name: String, _ text: String) throws -> String {
                let path = directory + "/" + name
                try Data(text.utf8).write(to: URL(fileURLWithPath: path))
                chmod(path, 0o755)
                return path
            }
            let python = try script("args.py", "#!/usr/bin/python3 -S\nimport sys\nprint(sys.argv, 'site' in sys.modules)\n")
            let (status, output) = try CLI.run(["run", "--no-default-tmpfs", python, "one", "two"])
            #expect(status == 0)
            #expect(output.contains("['\(python)', 'one', 'two'] False"), "\(output)")
            let viaEnv = try script("env.sh", "#!/usr/bin/env sh\necho from \"$0\" \"$1\"\n")
            let (envStatus, envOutput) = try CLI.run(["run", viaEnv, "x"], environment: ["PATH": "/usr/bin:/bin"])
            #expect(envStatus == 0 && envOutput.contains("from \(viaEnv) x"), "\(envOutput)")
            for index in 1...5 { _ = try script("loop\(index)", "#!\(directory)/loop\(index % 5 + 1)\n") }
            let (loopStatus, loopOutput) = try CLI.run(["run", directory + "/loop1"])
            #expect(loopStatus == ExitStatus.notExecutable && loopOutput.contains("too many levels of #! interpreters"), "\(loopOutput)")
        }

        /// A program that cannot be started says why, with a shell's status: 127 not found
        /// (naming the PATH searched, never falling back to the current directory), 126 a
        /// directory or a device (a directory once crashed the CLI reading it as a script).
        @Test func programsThatCannotStartExitAsAShellWould() throws {
            let (missing, missingOutput) = try CLI.run(["run", "ks-no-such-program"], environment: ["PATH": "/usr/bin:/bin"])
            #expect(missing == ExitStatus.notFound)
            #expect(missingOutput.contains("ks-no-such-program: not found in PATH (searched /usr/bin:/bin)"), "\(missingOutput)")
            let (noPath, noPathOutput) = try CLI.run(["run", "./ks-no-such-program"])
            #expect(noPath == ExitStatus.notFound && noPathOutput.contains("no such file"), "\(noPathOutput)")
            let (directory, directoryOutput) = try CLI.run(["run", "/tmp"])
            #expect(directory == ExitStatus.notExecutable && directoryOutput.contains("/tmp is a directory"), "\(directoryOutput)")
            let (device, deviceOutput) = try CLI.run(["run", "/dev/null"])
            #expect(device == ExitStatus.notExecutable && deviceOutput.contains("not a regular file"), "\(deviceOutput)")
            let (found, _) = try CLI.run(["run", "true"], environment: ["PATH": "/nonexistent:/bin"])
            #expect(found == 0)
        }

        /// SIGTERM/SIGINT sent to `run` reach the guest: its handler runs (exit 3), an unhandled
        /// SIGINT ends it as Linux would (130), and a guest that ignores SIGTERM gets SIGKILL
        /// after `--stop-timeout` (137); the report is written in every case. (The guests sleep in
        /// short steps: a signal that lands between Python's last check and its next sleep call
        /// waits for that sleep to end, natively too; the handler writes with `os.write`, as a
        /// signal that lands while `print('ready')` still holds stdout would make `print` in the
        /// handler a reentrant call.)
        @Test func signalsAreForwardedToTheGuest() throws {
            func run(_ script: String, send signal: Int32, extra: [String] = [], viaExec: Bool = false) throws -> (status: Int32, output: String) {
                try #require(FileManager.default.isExecutableFile(atPath: CLI.path), "build the CLI first (swift build)")
                let report = LinuxFixtures.scratch("signals") + "/report-\(signal).json"
                let process = Process()
                process.executableURL = URL(fileURLWithPath: CLI.path)
                let python = ["/usr/bin/python3", "-c", script]
                // viaExec: a shell that execs python3 (the signal must follow the exec).
                let command = viaExec ? ["/bin/bash", "-c", "exec \"$0\" \"$@\"", "/usr/bin/python3", "-c", script] : python
                process.arguments = ["run", "--report-json", report] + extra + command
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = pipe
                try process.run()
                // Wait for the guest to say it is ready (its handler installed), then signal the CLI.
                var output = Data()
                let deadline = Date().addingTimeInterval(20)
                while !String(decoding: output, as: UTF8.self).contains("ready"), Date() < deadline {
                    output.append(pipe.fileHandleForReading.availableData)
                }
                kill(process.processIdentifier, signal)
                output.append(pipe.fileHandleForReading.readDataToEndOfFile())
                process.waitUntilExit()
                #expect(FileManager.default.fileExists(atPath: report), "no report after signal \(signal)")
                return (process.terminationStatus, String(decoding: output, as: UTF8.self))
            }
            let handled = try run("import os, signal, sys, time\nsignal.signal(signal.SIGTERM, lambda n, f: (os.write(1, b'got %d\\n' % n), sys.exit(3)))\nprint('ready', flush=True)\nwhile True: time.sleep(0.1)", send: SIGTERM)
            #expect(handled.status == 3 && handled.output.contains("got 15"), "\(handled)")
            let afterExec = try run("import os, signal, sys, time\nsignal.signal(signal.SIGTERM, lambda n, f: (os.write(1, b'got %d\\n' % n), sys.exit(3)))\nprint('ready', flush=True)\nwhile True: time.sleep(0.1)",
                                    send: SIGTERM, viaExec: true)
            #expect(afterExec.status == 3 && afterExec.output.contains("got 15"), "\(afterExec)")
            let interrupted = try run("import time\nprint('ready', flush=True)\nwhile True: time.sleep(0.1)", send: SIGINT)
            #expect(interrupted.status == 130 && interrupted.output.contains("KeyboardInterrupt"), "\(interrupted)")
            let stubborn = try run("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(30)",
                                   send: SIGTERM, extra: ["--stop-timeout", "0.5"])
            #expect(stubborn.status == 137, "\(stubborn)")
        }

        /// `--trace-syscalls` reads like strace: names from the system-call table, paths read
        /// from the guest and quoted, descriptors in decimal (AT_FDCWD by name), signals by name,
        /// errors by name.
        @Test func tracesReadLikeStrace() throws {
            let (_, output) = try CLI.run(["run", "--trace-syscalls", "/usr/bin/python3", "-c",
                                           "import os, signal\nsignal.signal(signal.SIGUSR1, lambda *a: None)\nos.kill(os.getpid(), signal.SIGUSR1)\nopen('/ks-no-such-file')"])
            #expect(output.contains("openat(AT_FDCWD, \"/ks-no-such-file\", 0x80000, 0) = -2 (ENOENT)"), "\(output.suffix(2000))")
            #expect(output.contains("kill(1, SIGUSR1) = 0"), "\(output.suffix(2000))")
            #expect(output.contains("rt_sigaction(SIGUSR1, 0x"))
            // Threads: each line names its thread once there are several; a clone shows the new
            // thread's id, a wait "?", never the run loop's own words.
            let threads = try CLI.run(["run", "--trace-syscalls", "/usr/bin/python3", "-c",
                                       "import threading\nt = threading.Thread(target=print, args=('x',))\nt.start(); t.join()"]).output
            #expect(threads.contains("[tid 2] ") && threads.contains("] clone3(0x") && !threads.contains("spawn(tid"), "\(threads.suffix(3000))")
            // --trace-output: the same lines in a file, none among the guest's own output; a
            // shell's child processes trace there too, each line with its pid.
            let file = LinuxFixtures.scratch("trace") + "/trace.txt"
            let traced = try CLI.run(["run", "--trace-output", file, "/bin/sh", "-c", "echo guest-output; /bin/true"])
            #expect(traced.status == 0 && traced.output == "guest-output\n", "\(traced)")
            let lines = try String(contentsOfFile: file, encoding: .utf8)
            #expect(lines.contains("write(1, ") && lines.contains("execve(") && lines.contains("[pid 2] "), "\(lines.suffix(2000))")
            let unwritable = try CLI.run(["run", "--trace-output", "/ks-no-such-dir/trace.txt", "/bin/true"])
            #expect(unwritable.status == 64 && unwritable.output.contains("cannot create /ks-no-such-dir/trace.txt"))
        }

        /// A copy of the binary away from any checkout builds guests with the SDK header it
        /// carries (written to a private cache directory), not a header from a build-time path.
        @Test func aCopiedBinaryBuildsGuestsWithItsOwnHeader() throws {
            let directory = LinuxFixtures.scratch("copied-cli")
            let copy = directory + "/kvmsandbox"
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: CLI.path, toPath: copy)
            let environment = ["HOME": directory + "/home", "XDG_CACHE_HOME": ""]
            let source = Guests.repository.appendingPathComponent("Examples/hello.c").path
            let built = try CLI.run(["cc", "-o", directory + "/hello", source], environment: environment, executable: copy)
            #expect(built.status == 0, "\(built.output)")
            let doctor = try CLI.run(["doctor"], environment: environment, executable: copy)
            #expect(doctor.output.contains("SDK headers: \(directory)/home/.cache/kvmsandbox/sdk-"), "\(doctor.output)")
            #expect(try CLI.run(["run", directory + "/hello"]).output.contains("hello from a KVM micro-VM"))
        }

        /// `--report-json` says which version wrote it, in which layout, and what the run cost:
        /// wall time, exits, the most guest memory it used (after a 64 MiB allocation: more).
        @Test func theReportCarriesVersionAndCosts() throws {
            let report = LinuxFixtures.scratch("report") + "/report.json"
            let (status, output) = try CLI.run(["run", "--report-json", report, "--memory", "256", "/usr/bin/python3", "-c",
                                                "b = bytearray(64 << 20); b[-1] = 1"])
            #expect(status == 0, "\(output)")
            let data = try #require(FileManager.default.contents(atPath: report))
            let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            #expect(object["schemaVersion"] as? Int == RunReport.currentSchemaVersion)
            #expect((object["version"] as? String)?.isEmpty == false)
            #expect((object["wallSeconds"] as? Double ?? 0) > 0)
            #expect((object["exits"] as? Int ?? 0) > 0)
            let peak = object["peakGuestMemory"] as? UInt64 ?? 0
            #expect(peak > 64 << 20 && peak <= 256 << 20, "\(peak)")
            #expect(object["guestMemoryLimit"] as? UInt64 == 256 << 20)
        }

        /// Every usage error exits 64 with the usage, before anything is loaded: values of
        /// --syscalls, --host-calls, --exception-delivery and --allow-connect, a grant that does
        /// not exist, a --memory smaller than the stack (all once 125).
        @Test func usageErrorsExit64() throws {
            for arguments in [["--syscalls", "bogus"], ["--host-calls", "bogus"], ["--exception-delivery", "bogus"],
                              ["--allow-connect", "bogus"], ["--ro", "/ks-no-such-path"], ["--memory", "1"],
                              ["--max-processes", "0"], ["--memory", "1.5G"], ["--memory", "2P"], ["--memory", "100000000G"],
                              ["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "5 minutes"], ["--cwd", "/ks-no-such-dir"]] {
                let (status, output) = try CLI.run(["run"] + arguments + ["/bin/true"])
                #expect(status == 64, "\(arguments): \(output)")
                // (--cwd is checked against the guest's view once it exists: no usage text then.)
                #expect(arguments[0] == "--cwd" || output.contains("Usage: kvmsandbox run"), "\(arguments): \(output)")
            }
            #expect(try CLI.run(["run", "--timeout", "-1", "/bin/true"]).output.contains("must be a positive number"))
            #expect(try CLI.run(["run", "--cwd", "/ks-no-such-dir", "/bin/true"]).output.contains("no such directory in the guest's view"))
        }

        /// Every flag `run --help` lists (an option without a value) is followed by the program,
        /// not taken as the flag's value: the argument split that keeps huge argument lists fast
        /// knows each one (`--no-aslr` and three others were once missing from it).
        @Test func everyFlagOfRunIsKnownToTheArgumentSplit() throws {
            let help = try CLI.run(["run", "--help"]).output
            var flags: [String] = []
            for line in help.split(separator: "\n") where line.hasPrefix("  -") {  // (not a wrapped description line)
                let words = line.split(separator: " ").map(String.init)
                guard let first = words.first, first.hasPrefix("--"), !first.contains("<") else { continue }
                let name = first.split(separator: ",").first.map(String.init) ?? first
                if words.count == 1 || !words[1].hasPrefix("<") { flags.append(name) }
            }
            #expect(flags.count >= 10, "\(flags)")
            for flag in flags where !["--help", "--version"].contains(flag) {
                let (status, output) = try CLI.run(["run", flag, "/bin/echo", "program ran"])
                #expect(status == 0 && output.contains("program ran"), "\(flag): \(status) \(output.prefix(300))")
            }
        }

        /// Sizes and durations take units as docker and systemd spell them (`512M`, `2G`,
        /// `500ms`, `2m`); a plain number keeps the option's unit (MiB, seconds).
        @Test func sizesAndDurationsTakeUnits() throws {
            let script = "import resource; print(open('/proc/meminfo').readline().split()[1])"
            for (memory, kib) in [("512M", 512 << 10), ("1G", 1 << 20), ("768", 768 << 10)] {
                let (status, output) = try CLI.run(["run", "--memory", memory, "/usr/bin/python3", "-c", script])
                #expect(status == 0 && output == "\(kib)\n", "\(memory): \(output)")
            }
            let started = Date()
            let (status, _) = try CLI.run(["run", "--timeout", "300ms", "/usr/bin/python3", "-c", "while True: pass"])
            #expect(status == ExitStatus.timeout && Date().timeIntervalSince(started) < 10)
            #expect(try CLI.run(["run", "--timeout", "1m", "/bin/true"]).status == 0)
        }

        /// A user who may not open /dev/kvm is told its owner, group and mode and how to join
        /// the group (run as `nobody` through runuser when the tests run as root).
        @Test func aKVMPermissionErrorNamesTheGroup() throws {
            var device = stat()
            guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser"),
                  stat("/dev/kvm", &device) == 0, device.st_mode & 0o006 == 0 else {
                print("SKIPPED aKVMPermissionErrorNamesTheGroup: needs root, runuser, and a /dev/kvm others may not open")
                return
            }
            var template = Array("/tmp/ks-nobody-XXXXXX".utf8CString)
            let directory = try #require(mkdtemp(&template).map { String(cString: $0) })
            defer { try? FileManager.default.removeItem(atPath: directory) }
            chmod(directory, 0o755)
            try FileManager.default.copyItem(atPath: CLI.path, toPath: directory + "/kvmsandbox")
            let (status, output) = try CLI.run(["-u", "nobody", "--", directory + "/kvmsandbox", "run", "/bin/true"], executable: "/usr/sbin/runuser")
            #expect(status == ExitStatus.sandboxError)
            var info = stat()
            stat("/dev/kvm", &info)
            let group = String(cString: getgrgid(info.st_gid).pointee.gr_name)
            #expect(output.contains("no permission to open /dev/kvm (owner root, group \(group), mode \(String(info.st_mode & 0o7777, radix: 8)))"), "\(output)")
            #expect(output.contains("usermod -aG \(group)"))
        }

        /// A run that fails from a directory the guest cannot see says the guest started in /.
        @Test func anUngrantedWorkingDirectoryIsExplained() throws {
            let directory = LinuxFixtures.scratch("ungranted-cwd")
            let (status, output) = try CLI.run(["run", "/bin/ls", "ks-missing"], directory: directory)
            #expect(status == 2)
            #expect(output.contains("is not granted, so the guest started in /"), "\(output)")
            #expect(!output.contains("/proc/"), "host pseudo-files are never suggested: \(output)")
            // --quiet: the guest's own words only.
            let quiet = try CLI.run(["run", "--quiet", "/bin/ls", "ks-missing"], directory: directory)
            #expect(quiet.status == 2 && !quiet.output.contains("kvmsandbox:"), "\(quiet.output)")
        }

        /// `--max-processes` bounds a shell's children (the fork past it is EAGAIN, as the shell
        /// reports) and the report describes the program that ran last (after `exec`).
        @Test func processesFromTheCommandLine() throws {
            let (status, output) = try CLI.run(["run", "--max-processes", "1", "--cwd", "/", "/bin/busybox", "sh", "-c", "/bin/true; echo after"])
            #expect(status == 2 && output == "sh: can't fork: Resource temporarily unavailable\n", "\(output)")
            let exec = try CLI.run(["run", "--verbose", "/bin/bash", "-c", "exec /bin/busybox true"])
            #expect(exec.status == 0, "\(exec.output)")
            #expect(exec.output.contains("exited with status 0"), "\(exec.output)")
        }

        /// `--env NAME` passes the host's value (and nothing when the host has none), as docker's
        /// `-e NAME`; PATH is /usr/local/bin:/usr/bin:/bin unless given, as docker gives one.
        @Test func aBareEnvironmentNameTakesTheHostsValue() throws {
            let (status, output) = try CLI.run(["run", "--env", "KS_TEST_VAR", "--env", "KS_TEST_UNSET", "--env", "X=1", "/bin/busybox", "env"],
                                              environment: ["KS_TEST_VAR": "from-host"])
            #expect(status == 0)
            #expect(output.split(separator: "\n").sorted() == ["KS_TEST_VAR=from-host", "PATH=/usr/local/bin:/usr/bin:/bin", "X=1"])
            let given = try CLI.run(["run", "--env", "PATH=/bin", "/bin/busybox", "env"])
            #expect(given.output == "PATH=/bin\n")
        }

        /// A program that ends before its ready point is reported with its last words (a Python
        /// traceback) and how it ended, not "exited with status 1" alone.
        @Test func aFailedBootShowsWhyTheProgramStopped() throws {
            let (status, output) = try CLI.run(["snapshot", "-o", LinuxFixtures.scratch("boot") + "/x.snap", "--",
                                                "/usr/bin/python3", "-c", "import nonexistent_module"])
            #expect(status == ExitStatus.sandboxError)
            #expect(output.contains("booting /usr/bin/python3"))
            #expect(output.contains("exited with status 1 before its ready point"))
            #expect(output.contains("ModuleNotFoundError: No module named 'nonexistent_module'"))
        }
    }
}
