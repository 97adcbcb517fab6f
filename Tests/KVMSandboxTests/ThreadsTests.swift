import Foundation
import KVMSandbox
import KVMSandboxTools
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Programs for the threads-and-signals tests, built once per test process: C with glibc
/// (`gcc -static -pthread`) and Go (`CGO_ENABLED=0 go build`).
enum ThreadPrograms {
    static let sources = Guests.testsDirectory.deletingLastPathComponent().appendingPathComponent("Guests")

    /// `Tests/Guests/<name>.c` built statically with glibc and `flags`.
    static func c(_ name: String, flags: [String] = []) throws -> String {
        let output = Guests.outputDirectory.appendingPathComponent("thread-\(name)").path
        if !FileManager.default.fileExists(atPath: output) {
            let status = GuestToolchain.spawn(["gcc", "-static", "-O1", "-pthread"] + flags + ["-o", output, sources.appendingPathComponent("\(name).c").path],
                                              discardingOutput: true)
            try #require(status == 0, "gcc -static failed with status \(status)")
        }
        return output
    }

    /// `Tests/Guests/go/<name>.go` built as a static Go program (no cgo).
    static func go(_ name: String) throws -> String {
        let output = Guests.outputDirectory.appendingPathComponent("go-\(name)").path
        if !FileManager.default.fileExists(atPath: output) {
            let source = sources.appendingPathComponent("go/\(name).go").path
            let cache = Guests.outputDirectory.appendingPathComponent("go-cache").path
            let status = GuestToolchain.spawn(["/usr/bin/env", "CGO_ENABLED=0", "GOCACHE=\(cache)", "GOPATH=\(cache)", "HOME=\(cache)",
                                               "go", "build", "-o", output, source], discardingOutput: true)
            try #require(status == 0, "go build failed with status \(status) (apt-get install golang-go; Scripts/setup does)")
        }
        return output
    }

    /// Whether this CPU has AVX2 (the vector-register test uses it).
    static let hasAVX2: Bool = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.contains(" avx2") ?? false
}

extension KVMTests {
    /// Threads on one vCPU and signals, for unmodified programs: pthreads, Go, Python's thread
    /// pool, pigz; preemption, deadlocks, limits; signal handlers for faults and timers.
    @Suite struct ThreadsAndSignals {
        @Test func pthreadsMutexConditionBarrierJoinAndPreemption() throws {
            let (outcome, stdout, stderr) = try LinuxFixtures.run(try ThreadPrograms.c("threads"), [])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "total=120000 joined=240\nspinner=7\n")
        }

        /// Four threads preempted mid-loop keep their own XMM and YMM registers (this failed while
        /// the vCPU's XCR0 lacked AVX: KVM then saved only the SSE half).
        @Test(.enabled(if: ThreadPrograms.hasAVX2, "this CPU has no AVX2"))
        func vectorRegistersSurviveThreadSwitches() throws {
            let (outcome, stdout, _) = try LinuxFixtures.run(try ThreadPrograms.c("vector-threads", flags: ["-mavx2"]), [])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "bad=0\n")
        }

        @Test func aDeadlockIsAnOutcomeNamingTheFutexes() throws {
            let (outcome, stdout, _) = try LinuxFixtures.run(try ThreadPrograms.c("deadlock"), [])
            #expect(stdout == "waiting\n")
            guard case .deadlocked(let waits) = outcome else {
                Issue.record("expected a deadlock, got \(outcome)")
                return
            }
            #expect(waits.count == 2)
            #expect(Set(waits.map(\.thread)) == [1, 2])
            #expect(outcome.exitStatus == ExitStatus.deadlock)
            #expect(outcome.description.contains("futex 0x"))
        }

        @Test func aFaultNamesItsThreadAndShowsTheOthers() throws {
            let (outcome, _, _) = try LinuxFixtures.run(try ThreadPrograms.c("thread-crash", flags: ["-g"]), [])
            guard case .fault(let fault) = outcome else {
                Issue.record("expected a fault, got \(outcome)")
                return
            }
            #expect(fault.vector == 14)
            #expect(fault.thread == 2)
            #expect(fault.backtrace.frames.first?.function == "crash")
            #expect(fault.description.contains("(thread 2)"))
            let main = try #require(fault.otherThreads.first { $0.thread == 1 })
            #expect(main.backtrace.frames.contains { $0.function == "main" }, "\(main.backtrace)")
        }

        /// Hostile calls: a process sharing memory without CLONE_VFORK is EINVAL, odd flags and clone3 structs EINVAL/EFAULT,
        /// unaligned futexes EINVAL; a forged rt_sigreturn frame and a handler whose alternate
        /// stack is not mapped end the run with SIGSEGV, as Linux would kill the process.
        @Test func hostileThreadAndSignalCalls() throws {
            let program = try ThreadPrograms.c("hostile-threads")
            let (outcome, stdout, _) = try LinuxFixtures.run(program, ["calls"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "shared-vm=-1/22 flags=-1/22 clone3-small=-1/22 clone3-huge=-1/22 clone3-wild=-1/14 futex-unaligned=-1/22 futex-op=-1/38\n")
            #expect(try LinuxFixtures.run(program, ["sigreturn"]).outcome == .signaled(signal: 11))
            #expect(try LinuxFixtures.run(program, ["altstack"]).outcome == .signaled(signal: 11))
        }

        @Test func threadsPastTheLimitAreEAGAIN() throws {
            let program = try ThreadPrograms.c("thread-limit")
            var configuration = SandboxConfiguration()
            configuration.arguments = [program]
            configuration.standardOutput = .capture
            configuration.maximumThreads = 8
            configuration.timeout = 20
            let sandbox = try Sandbox(elfPath: program, configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self) == "created 7, then EAGAIN\n")  // 8 with the main one
        }

        /// SIGSEGV on an alternate stack recovered with siglongjmp, SIGILL resumed by editing the
        /// ucontext, alarm(1) while computing, then a default action ending the run: as natively.
        @Test func signalHandlersForFaultsAndTimers() throws {
            let program = try ThreadPrograms.c("signals")
            let (outcome, stdout, _) = try LinuxFixtures.run(program, [])
            // (Not compared with a native run here: a child of the test process inherits its
            // blocked signals, so natively SIGALRM would never come.)
            #expect(outcome == .signaled(signal: 10))
            #expect(stdout.hasPrefix("recovered: addr=0x127c on_alternate=1 rbx=1234 rip_ok=1\nresumed after ud2: si_code=2\nalarm fired while computing: 1\n"))
        }

        @Test func goHello() throws {
            let (outcome, stdout, stderr) = try LinuxFixtures.run(try ThreadPrograms.go("hello"), [])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "hello from go 1\n")
        }

        /// Goroutines on a channel, a WaitGroup, time.Sleep, os.ReadFile of a granted file, and
        /// recover() from a nil dereference (SIGSEGV delivered to Go's handler).
        @Test func goGoroutinesFilesAndRecover() throws {
            let program = try ThreadPrograms.go("goroutines")
            let source = ThreadPrograms.sources.appendingPathComponent("go/goroutines.go").path
            let (outcome, stdout, stderr) = try LinuxFixtures.run(program, [source], grants: [FileGrant(hostPath: source)])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == (try DynamicPrograms.native(program, [source])))
            #expect(stdout.hasSuffix("recovered: runtime error: invalid memory address or nil pointer dereference\n"))
        }

        /// Go reserves its arenas up front: an address-space limit below that stops it, while
        /// memory stays the smaller, separate bound.
        @Test func theAddressSpaceLimitBoundsReservations() throws {
            let program = try ThreadPrograms.go("hello")
            var configuration = SandboxConfiguration()
            configuration.arguments = [program]
            configuration.standardOutput = .capture
            configuration.standardError = .capture
            configuration.timeout = 20
            configuration.addressSpaceLimit = 64 << 20
            let limited = try Sandbox(elfPath: program, configuration: configuration)
            #expect(try limited.run() != .exited(status: 0))
            configuration.addressSpaceLimit = 4 << 30
            let roomy = try Sandbox(elfPath: program, configuration: configuration)
            #expect(try roomy.run() == .exited(status: 0))
            #expect(String(decoding: roomy.capturedOutput(fd: 1), as: UTF8.self) == "hello from go 1\n")
        }

        @Test func pythonThreadPool() throws {
            let (outcome, stdout, stderr) = try DynamicPrograms.run(
                "/usr/bin/python3", ["-c", "from concurrent.futures import ThreadPoolExecutor as E; print(sum(E(4).map(lambda x:x*x, range(100))))"])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "328350\n")
        }

        @Test func pigzWithFourThreadsIsByteIdentical() throws {
            let directory = LinuxFixtures.scratch("pigz")
            let input = directory + "/input.bin"
            try Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: ($0 &* 2654435761) >> 13) }).write(to: URL(fileURLWithPath: input))
            try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/pigz"), "install pigz (Scripts/setup does)")
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/pigz", "-p", "4", "-n", "-c", input]
            configuration.standardOutput = .capture
            configuration.files = [FileGrant(hostPath: directory)]
            configuration.memorySize = 256 << 20
            configuration.timeout = 60
            let sandbox = try Sandbox(elfPath: "/usr/bin/pigz", configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            let compressed = sandbox.capturedOutput(fd: 1)
            let native = try DynamicPrograms.nativeBytes("/usr/bin/pigz", ["-p", "4", "-n", "-c", input])
            #expect(compressed.count == native.count)
            #expect(compressed == native)
        }

        /// A python3 snapshot whose thread pool is running, forked and reset: every request gets
        /// the pool's threads back as they were.
        @Test func threadsInSnapshotsForksAndResets() throws {
            let snapshot = try DynamicPrograms.pythonSnapshot("py-threads", script: """
            import sys
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(4)
            list(pool.map(abs, range(8)))
            n = int(sys.stdin.read())
            print(sum(pool.map(lambda x: x * x, range(n))))
            """, memory: 256 << 20)
            let vm = try snapshot.fork()
            for n in [10, 100, 7, 1000] {
                vm.standardInput = .bytes(Array("\(n)".utf8))
                let outcome = try vm.run()
                #expect(outcome == .exited(status: 0), "\(String(decoding: vm.capturedOutput(fd: 2), as: UTF8.self))")
                #expect(String(decoding: vm.capturedOutput(fd: 1), as: UTF8.self) == "\((0..<n).map { $0 * $0 }.reduce(0, +))\n")
                try vm.reset()
            }
        }
    }
}
