import Foundation
import KVMSandbox
import KVMSandboxTools
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension KVMTests {
    /// Processes: fork, vfork/posix_spawn, execve and wait, each process its own VM on its own
    /// host thread, pipes and signals between them (`Tests/Guests/processes.c`, bash, python3).
    @Suite struct Processes {
        /// Runs `path` with the default system view, `LC_ALL=C`, output captured.
        static func run(_ path: String, _ arguments: [String], grants: [FileGrant] = [], cwd: String? = nil,
                        configure: (inout SandboxConfiguration) -> Void = { _ in }) throws -> (outcome: RunOutcome, stdout: String, stderr: String) {
            try #require(FileManager.default.isExecutableFile(atPath: path), "install \(path) (Scripts/setup does)")
            var configuration = SandboxConfiguration()
            configuration.arguments = [path] + arguments
            configuration.environment = ["LC_ALL=C", "PATH=/usr/bin:/bin"]
            configuration.standardOutput = .capture
            configuration.standardError = .capture
            configuration.files = grants
            configuration.workingDirectory = cwd
            configuration.memorySize = 256 << 20
            configuration.timeout = 60
            configure(&configuration)
            let sandbox = try Sandbox(elfPath: path, configuration: configuration)
            let outcome = try sandbox.run()
            return (outcome, String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self),
                    String(decoding: sandbox.capturedOutput(fd: 2), as: UTF8.self))
        }

        /// What `Tests/Guests/processes.c` (glibc; the conformance corpus runs it with musl, on
        /// PVM and emulated SVM) must print in each mode: wait statuses and a pipe from a child;
        /// kill(-1) ending the sandbox's other processes and nothing outside it; an orphan going to
        /// pid 1, killed by its PR_SET_PDEATHSIG; sigsuspend and pause woken by another process;
        /// pid selectors with no meaning.
        static let guestModes: [(mode: String, stdout: String)] = [
            ("waits", """
                child sees parent=1 (19 bytes), reaped=1 exited=1 status=7
                eof after the writer exited: 0
                signaled=1 signal=15
                wnohang=0
                killed=1
                no children: -1 ECHILD

                """),
            ("kill-all", "kill(-1)=0 killed=3, the caller survived\nkill(pid 4242)=-1 ESRCH\n"),
            ("orphans", "middle exited 3\norphan reaped by pid 1: 1, killed by 9\n"),
            ("suspend", "sigsuspend=-1 EINTR usr1=1 still blocked=1\npause ended by SIGCHLD: 1\n"),
            // Hostile selectors: INT_MIN has no negation (it once trapped the host), a negative group is invalid.
            ("extremes", "kill(INT_MIN)=-1 ESRCH waitpid(INT_MIN)=-1 ESRCH waitid(P_PGID,-5)=-1 EINVAL waitid(P_PGID,INT_MIN)=-1 EINVAL\n"),
            // MAP_SHARED memory and process-shared semaphores between processes (as natively).
            ("shared", """
                ping-pong counter=1000 child status=0
                shm_open: child status=0, parent reads "written by the child"
                after MADV_DONTNEED counter=1000
                private after fork: 7

                """),
            // W^X across processes: shared memory is never executable (Linux would allow both).
            ("shared-exec", "mprotect(shared, PROT_EXEC)=-1 EACCES\nmmap(shared, PROT_EXEC) failed=1 EACCES\n"),
            // Hostile: a timed wait nobody ends; shared mappings made and dropped forever stop at
            // the per-VM limit (`GuestMemory.maximumOverlays`), the host unharmed.
            // AF_UNIX stream sockets bound to a path and an abstract name, between processes (as natively).
            ("unix", """
                path: bind=0 again=-1 EADDRINUSE, connect before listen=-1 ECONNREFUSED, poll=1, read "hello through a unix socket", child status=0
                after unlink: connect=-1 ENOENT
                abstract: bind=0 again=-1 EADDRINUSE, connect before listen=-1 ECONNREFUSED, poll=1, read "hello through a unix socket", child status=0

                """),
            // Recycled guest memory: no process sees the bytes of one that ended before it.
            ("recycle", "fillers=6, forks that saw another's bytes=0, execs that did=0 (failed: 0)\n"),
            ("shared-limits", "sem_timedwait=-1 ETIMEDOUT\nshared mappings before refusal: some ENOMEM, private still works: 1\n"),
        ]

        @Test(arguments: Self.guestModes.map(\.mode))
        func processCallsAnswerAsLinux(mode: String) throws {
            // An in-memory /dev/shm, as the CLI gives by default (shm_open's directory); the
            // program's own directory, read-only, for the modes that exec it again.
            let program = try ThreadPrograms.c("processes")
            let directory = URL(fileURLWithPath: program).deletingLastPathComponent().path
            let (outcome, stdout, stderr) = try Self.run(program, [mode], grants: [FileGrant(hostPath: directory)]) {
                $0.memoryDirectories = ["/dev/shm"]
            }
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == Self.guestModes.first { $0.mode == mode }?.stdout)
        }

        /// Commands that start other programs, each run natively and in the sandbox in a scratch
        /// directory of the same contents, their output compared byte for byte (benign
        /// programs from the distribution: running them natively harms nothing).
        static let toolCommands: [(name: String, shell: String)] = [
            ("xargs -P2", "printf '3\\n1\\n2\\n' | xargs -P2 -n1 sh -c 'echo line $0' | sort"),
            ("find -exec", "find . -name '*.c' -exec wc -l {} + | sort"),
            ("tar czf, tar xzf", "tar czf /tmp/t.tgz --owner=0 --group=0 --numeric-owner src && mkdir -p out && tar xzf /tmp/t.tgz -C out && cat out/src/a.c && tar tzf /tmp/t.tgz | sort"),
            ("perl system and backticks", "perl -e 'system(\"echo from system\"); my $x = `echo backticks`; print \"got $x\"; print \"status \", $? >> 8, \"\\n\"'"),
            ("dash pipeline", "dash -c 'ls src | sort -r | head -3'"),
            ("busybox sh applets", "busybox sh -c 'busybox seq 3 | busybox wc -l; busybox echo done'"),
            ("git init, add, commit", "git init -q -b main repo && cp src/a.c repo/ && git -C repo add a.c && git -C repo -c user.name=t -c user.email=t@e commit -q -m first && git -C repo log --format=%s && git -C repo ls-files"),
        ]

        @Test(arguments: Self.toolCommands.map(\.name))
        func commandsThatStartProgramsMatchNativeRuns(name: String) throws {
            let shell = try #require(Self.toolCommands.first { $0.name == name }?.shell)
            func scratch() throws -> String {
                let directory = LinuxFixtures.scratch("tools")
                try FileManager.default.createDirectory(atPath: directory + "/src", withIntermediateDirectories: true)
                for (file, lines) in [("a.c", 3), ("b.c", 5), ("notes.txt", 2)] {
                    try Data(String(repeating: "int x;\n", count: lines).utf8).write(to: URL(fileURLWithPath: "\(directory)/src/\(file)"))
                }
                return directory
            }
            let native = try scratch()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = ["-c", shell.replacingOccurrences(of: "/tmp/t.tgz", with: native + "/t.tgz")]
            process.currentDirectoryURL = URL(fileURLWithPath: native)
            process.environment = ["LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": native, "GIT_CONFIG_NOSYSTEM": "1"]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let expected = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            try #require(process.terminationStatus == 0, "natively: \(shell)")
            let directory = try scratch()
            let (outcome, stdout, stderr) = try Self.run("/bin/bash", ["-c", shell], grants: [FileGrant(hostPath: directory, writable: true)],
                                                         cwd: directory) {
                $0.memoryDirectories = ["/tmp"]
                $0.environment += ["HOME=\(directory)", "GIT_CONFIG_NOSYSTEM=1"]
            }
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == expected)
        }

        /// `processStatistics` counts every process, every execve and the exits of all of them.
        @Test func statisticsCoverEveryProcess() throws {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/bin/bash", "-c", "/bin/true; exec /bin/true"]
            configuration.timeout = 30
            let sandbox = try Sandbox(elfPath: "/bin/bash", configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            let statistics = sandbox.processStatistics
            #expect(statistics.processes == 2 && statistics.images == 2, "\(statistics)")
            #expect(statistics.exits > sandbox.currentImage.statistics.exits + sandbox.statistics.exits)
        }

        /// A bash pipeline, a subshell, a command substitution, external commands in a loop, and
        /// `yes | head` (yes ends by SIGPIPE: status 141): the same output as a native run.
        @Test func bashPipelinesAndSubshells() throws {
            let directory = LinuxFixtures.scratch("bash")
            for (name, lines) in [("a.txt", 2), ("b.txt", 3)] {
                try Data(String(repeating: "line\n", count: lines).utf8).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
            }
            let script = "echo hello | tr a-z A-Z | wc -c; (cd / && ls -d usr); x=$(echo abc | rev); echo $x; "
                + "for f in *.txt; do wc -l \"$f\"; done; false || echo \"status $?\"; sh -c 'exit 3'; echo $?; "
                + "yes | head -2; echo \"${PIPESTATUS[@]}\""
            let (outcome, stdout, stderr) = try Self.run("/bin/bash", ["-c", script], grants: [FileGrant(hostPath: directory)], cwd: directory)
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "6\nusr\ncba\n2 a.txt\n3 b.txt\nstatus 1\n3\ny\ny\n141 0\n")
            // Children write through the descriptor the shell opened: one offset, as on Linux.
            let log = LinuxFixtures.scratch("bash-offsets")
            let shared = try Self.run("/bin/bash", ["-c", "{ /bin/echo a; /bin/echo b; } > out.txt; for i in 1 2; do /bin/echo $i; done >> out.txt; cat out.txt"],
                                      grants: [FileGrant(hostPath: log, writable: true)], cwd: log)
            #expect(shared.stdout == "a\nb\n1\n2\n", "\(shared.stderr)")
        }

        /// `make -j2`: recipes through /bin/sh by posix_spawn (with POSIX_SPAWN_RESETIDS: setresuid
        /// to itself), two at once, each in its own VM.
        @Test func makeRunsRecipesInParallel() throws {
            let directory = LinuxFixtures.scratch("make")
            try Data("all: a.out b.out\n\t@cat a.out b.out\na.out:\n\techo a | tr a-z A-Z > a.out\nb.out:\n\techo b > b.out\n".utf8)
                .write(to: URL(fileURLWithPath: directory + "/Makefile"))
            let (outcome, stdout, stderr) = try Self.run("/usr/bin/make", ["-s", "-j2"], grants: [FileGrant(hostPath: directory, writable: true)], cwd: directory)
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "A\nb\n")
        }

        /// python's subprocess (posix_spawn/vfork + exec), os.popen, os.fork with waitpid, and
        /// Popen.kill: the statuses Linux gives.
        @Test func pythonSubprocessAndFork() throws {
            let script = """
                import os, subprocess, sys
                r = subprocess.run(["sort"], input=b"b\\na\\n", capture_output=True)
                print(r.returncode, r.stdout)
                print(os.popen("echo popen").read().strip())
                pid = os.fork()
                if pid == 0:
                    os._exit(7)
                print("waitpid", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
                p = subprocess.Popen(["sleep", "30"])
                p.kill()
                print("killed", p.wait())
                try:
                    subprocess.run(["/nonexistent/program"])
                except FileNotFoundError as e:
                    print("missing", e.errno)
                """
            let (outcome, stdout, stderr) = try Self.run("/usr/bin/python3", ["-c", script])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "0 b'a\\nb\\n'\npopen\nwaitpid 7\nkilled -9\nmissing 2\n")
        }

        /// python's multiprocessing: a `Pool(2)` (worker processes fed through pipes, locked by
        /// process-shared semaphores in `/dev/shm`), a `Value` in shared memory that two
        /// processes increment under its lock, `shared_memory.SharedMemory` opened by name, and a
        /// `TemporaryFile` in `/dev/shm` (unlinked while open).
        @Test func pythonMultiprocessing() throws {
            let script = """
                import multiprocessing as mp
                from multiprocessing import shared_memory
                def square(x): return x * x
                def add(v, n):
                    for _ in range(n):
                        with v.get_lock(): v.value += 1
                def fill(name):
                    s = shared_memory.SharedMemory(name=name)
                    s.buf[:5] = b"hello"
                    s.close()
                if __name__ == "__main__":
                    with mp.Pool(2) as pool:
                        print(sum(pool.map(square, range(1000))))
                    v = mp.Value("i", 0)
                    ps = [mp.Process(target=add, args=(v, 200)) for _ in range(2)]
                    for p in ps: p.start()
                    for p in ps: p.join()
                    print(v.value, [p.exitcode for p in ps])
                    s = shared_memory.SharedMemory(create=True, size=4096)
                    p = mp.Process(target=fill, args=(s.name,)); p.start(); p.join()
                    print(bytes(s.buf[:5]))
                    s.close(); s.unlink()
                    import os, tempfile
                    with tempfile.TemporaryFile(dir="/dev/shm") as f:
                        f.write(b"kept"); f.seek(0); print(f.read(), os.listdir("/dev/shm"))
                """
            let (outcome, stdout, stderr) = try Self.run("/usr/bin/python3", ["-c", script]) { $0.memoryDirectories = ["/tmp", "/dev/shm"] }
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "332833500\n400 [0, 0]\nb'hello'\nb'kept' []\n")
        }

        /// gpg encrypts and decrypts with a passphrase: it starts gpg-agent (fork, exec, the
        /// agent daemonizes) and talks to it through the AF_UNIX socket the agent binds in
        /// `~/.gnupg` (an in-memory home: a socket path must fit in 108 bytes, and the scratch
        /// directory's does not); the agent is killed when gpg, the first process, ends.
        @Test func gpgTalksToItsAgent() throws {
            let directory = LinuxFixtures.scratch("gpg")
            try Data("a secret\n".utf8).write(to: URL(fileURLWithPath: directory + "/plain.txt"))
            let common = ["--batch", "--pinentry-mode", "loopback", "--passphrase", "pw"]
            for arguments in [common + ["-c", "-o", "sealed.gpg", "plain.txt"], common + ["-q", "-d", "sealed.gpg"]] {
                let (outcome, stdout, stderr) = try Self.run("/usr/bin/gpg", arguments, grants: [FileGrant(hostPath: directory, writable: true)],
                                                             cwd: directory) {
                    $0.environment.append("HOME=/home")
                    $0.memoryDirectories = ["/home"]
                }
                #expect(outcome == .exited(status: 0), "\(stderr)")
                if arguments.contains("-d") { #expect(stdout == "a secret\n") }
            }
        }

        /// `gcc -O2 hello.c -o hello && ./hello` in the sandbox: the driver runs cc1, as and
        /// collect2/ld, which pass temporary files through the in-memory /tmp they share; the
        /// program it wrote runs only with `executesWritableFiles`.
        @Test func gccCompilesAndRunsAProgram() throws {
            let directory = LinuxFixtures.scratch("gcc")
            try Data("#include <stdio.h>\nint main(void) { puts(\"hello from gcc\"); return 0; }\n".utf8)
                .write(to: URL(fileURLWithPath: directory + "/hello.c"))
            let grants = [FileGrant(hostPath: directory, writable: true)]
            let refused = try Self.run("/bin/bash", ["-c", "gcc -O2 hello.c -o hello && ./hello"], grants: grants, cwd: directory) {
                $0.memoryDirectories = ["/tmp"]
            }
            #expect(refused.outcome == .exited(status: 126), "\(refused.stderr)")
            #expect(refused.stderr.contains("./hello: Permission denied"), "\(refused.stderr)")
            let (outcome, stdout, stderr) = try Self.run("/bin/bash", ["-c", "gcc -O2 hello.c -o hello && ./hello"], grants: grants, cwd: directory) {
                $0.memoryDirectories = ["/tmp"]
                $0.executesWritableFiles = true
            }
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "hello from gcc\n")
        }

        /// A handler that runs a subprocess per request in forks of a snapshot: each request's
        /// child is its own VM, ended and reaped by the time the fork is reset.
        @Test func forksOfASnapshotRunSubprocesses() throws {
            let snapshot = try DynamicPrograms.pythonSnapshot("py-spawn", script: """
                import sys, subprocess
                request = sys.stdin.read()
                r = subprocess.run(["sort"], input=request.encode(), capture_output=True)
                print(r.returncode, r.stdout.decode().split())
                """, memory: 256 << 20)
            let vm = try snapshot.fork()
            for index in 0..<4 {
                vm.standardInput = .bytes(Array("c\nb\na\(index)\n".utf8))
                let outcome = try vm.run()
                #expect(outcome == .exited(status: 0), "\(String(decoding: vm.capturedOutput(fd: 2), as: UTF8.self))")
                #expect(String(decoding: vm.capturedOutput(fd: 1), as: UTF8.self) == "0 ['a\(index)', 'b', 'c']\n")
                try vm.reset()
            }
        }

        /// A snapshot holds one VM: taking one while the program has a child running is refused
        /// with a reason, and the child is ended when the sandbox goes.
        @Test func aSnapshotOfSeveralProcessesIsRefused() throws {
            #expect(throws: SandboxError.severalProcesses(2)) {
                _ = try DynamicPrograms.pythonSnapshot("py-children", script: """
                    import sys, subprocess
                    child = subprocess.Popen(["sleep", "30"])
                    sys.stdin.read()
                    """, memory: 256 << 20)
            }
        }

        /// A fork bomb stops at the process limit with EAGAIN; the program ends its children by
        /// PID and reaps them all.
        @Test func aForkBombStopsAtTheLimit() throws {
            let (outcome, stdout, stderr) = try Self.run(try ThreadPrograms.c("processes"), ["bomb"]) { $0.maximumProcesses = 6 }
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "forked 5, then EAGAIN\nreaped 5\n")  // 6 with the first one
        }

        /// A program in a writable grant cannot be executed (what the guest wrote is not run)
        /// unless the configuration allows it; a read-only one runs.
        @Test func execFromAWritableGrantIsRefused() throws {
            let writable = LinuxFixtures.scratch("exec-rw")
            let program = try ThreadPrograms.c("processes")
            let copy = writable + "/copy"
            try FileManager.default.copyItem(atPath: program, toPath: copy)
            let grants = [FileGrant(hostPath: writable, writable: true)]
            let refused = try Self.run(program, ["exec", copy, "copy", "waits"], grants: grants)
            #expect(refused.stdout == "execve \(copy): EACCES\nexit status 127\n", "\(refused.stderr)")
            let allowed = try Self.run(program, ["exec", copy, "copy", "bomb"], grants: grants) {
                $0.executesWritableFiles = true
                $0.maximumProcesses = 3
            }
            #expect(allowed.stdout == "forked 1, then EAGAIN\nreaped 1\nexit status 0\n", "\(allowed.stderr)")
            let missing = try Self.run(program, ["exec", "/nonexistent", "x"], grants: grants)
            #expect(missing.stdout == "execve /nonexistent: ENOENT\nexit status 127\n")
        }

        /// execve of a `#!` script runs its interpreter with the script's path, as Linux does.
        @Test func execOfAScript() throws {
            let directory = LinuxFixtures.scratch("exec-script")
            let script = directory + "/hello.sh"
            try Data("#!/bin/sh -e\necho \"script $0 $1\"\n".utf8).write(to: URL(fileURLWithPath: script))
            chmod(script, 0o755)
            let (outcome, stdout, stderr) = try Self.run(try ThreadPrograms.c("processes"), ["exec", script, "hello.sh", "arg"],
                                                         grants: [FileGrant(hostPath: directory)])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "script \(script) arg\nexit status 0\n")
        }

        /// The run's timeout ends children too: a child computing forever while its parent
        /// waits does not keep the run alive.
        @Test func theTimeoutEndsChildren() throws {
            let started = Date()
            let (outcome, _, _) = try Self.run(try ThreadPrograms.c("processes"), ["forever"]) { $0.timeout = 2 }
            guard case .timedOut = outcome else {
                Issue.record("expected a timeout, got \(outcome)")
                return
            }
            #expect(Date().timeIntervalSince(started) < 20)
        }
    }
}
