import Foundation
@testable import KVMSandbox
import KVMSandboxTools
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension KVMTests {
    /// Calls real programs make that the Linux layer once refused (`ENOSYS`) or answered
    /// wrongly (the compatibility issue); `Tests/Guests/compat-calls.c` with musl and glibc.
    @Suite struct Compatibility {
        /// python3 running `script` (with `arguments`) in a fresh VM of 256 MiB, output captured.
        static func python(_ script: String, _ arguments: [String] = [], grants: [FileGrant] = [], memoryDirectories: [String] = [],
                           memory: UInt64 = 256 << 20) throws -> (outcome: RunOutcome, stdout: String, stderr: String, sandbox: Sandbox) {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", "-c", script] + arguments
            configuration.files = grants
            configuration.memoryDirectories = memoryDirectories
            configuration.standardOutput = .capture
            configuration.standardError = .capture
            configuration.memorySize = memory
            configuration.timeout = 30
            let sandbox = try Sandbox(elfPath: "/usr/bin/python3", configuration: configuration)
            let outcome = try sandbox.run()
            return (outcome, String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self),
                    String(decoding: sandbox.capturedOutput(fd: 2), as: UTF8.self), sandbox)
        }

        /// `nproc`, `os.cpu_count()` and `sched_getaffinity` say what a native run says (the CPUs
        /// this process may use: the sandbox's processes run in parallel), or what the
        /// configuration tells them.
        @Test func theGuestSeesTheCPUsItsProcessesCanUse() throws {
            let script = "import os; print(os.cpu_count(), len(os.sched_getaffinity(0)), open('/sys/devices/system/cpu/online').read().strip())"
            let host = availableCPUs()
            var (outcome, stdout, stderr, _) = try Self.python(script)
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == "\(host) \(host) \(host == 1 ? "0" : "0-\(host - 1)")\n")
            var configuration = SandboxConfiguration()
            configuration.processors = 3
            configuration.arguments = ["/usr/bin/nproc"]
            configuration.standardOutput = .capture
            configuration.timeout = 30
            let sandbox = try Sandbox(elfPath: "/usr/bin/nproc", configuration: configuration)
            outcome = try sandbox.run()
            stdout = String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self)
            #expect(outcome == .exited(status: 0) && stdout == "3\n")
        }

        @Test(arguments: ["musl", "glibc"])
        func smallCallsAnswerAsLinux(libc: String) throws {
            let root = LinuxFixtures.scratch("compat-\(libc)")
            let rw = root + "/rw", ro = root + "/ro"
            for directory in [rw, ro] { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
            _ = FileManager.default.createFile(atPath: ro + "/r", contents: Data("r".utf8))
            let program = libc == "musl" ? try Guests.build("compat-calls")
                                         : try ThreadPrograms.c("compat-calls")
            let (outcome, stdout, stderr) = try LinuxFixtures.run(program, ["compat", rw, ro],
                                                                   grants: [FileGrant(hostPath: rw, writable: true), FileGrant(hostPath: ro)])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == """
                creat=0 chmod=0 mode=755 fchmod=0 fmode=640 ro=EROFS
                utimensat=0 mtime=1234567890 ftruncate=0 size=10000 truncate=0 size=3 fallocate=0 ro-truncate=EROFS
                chown-same=0 chown-keep=0 chown-other=EPERM
                fchdir=0 relative=0 opath=0 read=EBADF fstat-opath=0 statfs=0 bsize=4096 fstatfs=0
                cpu=ran thread=ran rusage=ran times=ran mlock=0
                null=chr rdev=1:3 stdout-differs=1 pipes-differ=1
                timerfd=0 read=8 expirations=some interval=10000000
                select=2 data=1 empty=0 out=1 pselect=0 waited=yes eof=1 badf=EBADF
                copy_file_range=11 from=11 sendfile=5 at=11 data=hello worldworld stream=EINVAL

                """)
            var status = stat()
            #expect(stat(rw + "/f", &status) == 0 && status.st_mode & 0o7777 == 0o640 && status.st_size == 8192)
        }
    }
}

extension KVMTests.Compatibility {
    /// The default system view: /usr and the curated /etc readable (time zones, magic,
    /// alternatives), identities synthesized (passwd, group, hostname), and /etc/shadow, /root,
    /// /home, /var and the host's machine id invisible.
    @Test func theDefaultSystemViewShowsWhatProgramsNeedAndNothingSecret() throws {
        let script = """
        import os
        def show(path):
            try:
                with open(path, "rb") as f: return "read"
            except OSError as e: return os.strerror(e.errno).split()[0]
        for path in ["/usr/share/zoneinfo/UTC", "/etc/nsswitch.conf", "/etc/ld.so.cache", "/etc/passwd", "/etc/group",
                     "/etc/hostname", "/etc/shadow", "/etc/machine-id", "/root/.bashrc", "/var/log/dpkg.log", "/home"]:
            print(path, show(path))
        print(open("/etc/passwd").read().split(":")[0], open("/etc/hostname").read().strip())
        print(sorted(n for n in os.listdir("/etc") if n in ("passwd", "shadow", "hostname", "alternatives", "machine-id")))
        print(os.path.isdir("/usr/share"), os.path.exists("/home"), os.path.exists("/root"))
        """
        let (outcome, stdout, stderr, _) = try Self.python(script)
        #expect(outcome == .exited(status: 0), "\(stderr)")
        let alternatives = FileManager.default.fileExists(atPath: "/etc/alternatives") ? "'alternatives', " : ""
        #expect(stdout == """
            /usr/share/zoneinfo/UTC \(FileManager.default.fileExists(atPath: "/usr/share/zoneinfo/UTC") ? "read" : "No")
            /etc/nsswitch.conf \(FileManager.default.fileExists(atPath: "/etc/nsswitch.conf") ? "read" : "No")
            /etc/ld.so.cache read
            /etc/passwd read
            /etc/group read
            /etc/hostname read
            /etc/shadow No
            /etc/machine-id No
            /root/.bashrc No
            /var/log/dpkg.log No
            /home No
            root sandbox
            [\(alternatives)'hostname', 'passwd']
            True False False

            """)
    }

    /// A guest refused memory by its memory size says so in its report.
    @Test func hittingTheMemoryLimitIsReported() throws {
        let (outcome, _, stderr, sandbox) = try Self.python("bytearray(96 << 20)", memory: 64 << 20)
        #expect(outcome == .exited(status: 1))
        #expect(stderr.contains("MemoryError"))
        #expect(sandbox.memoryLimitHits > 0)
        #expect(RunReport(.exited(status: 1), sandbox: sandbox).memoryLimit?.hasPrefix("the guest hit its memory limit (64 MiB)") == true)
    }
}

extension KVMTests.Compatibility {
    /// Record locks: sqlite3 on a database file works (it locks with fcntl), a lock the host
    /// holds on a file excludes the guest (EAGAIN), and flock works.
    @Test func recordLocksAreHeldOnTheHostFile() throws {
        let directory = LinuxFixtures.scratch("locks")
        for name in ["held", "free"] { _ = FileManager.default.createFile(atPath: directory + "/" + name, contents: Data("x".utf8)) }
        let holder = open(directory + "/held", O_RDWR)
        defer { close(holder) }
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        try #require(fcntl(holder, 37 /* F_OFD_SETLK */, &lock) == 0)
        let script = """
        import fcntl, sqlite3, sys
        db = sqlite3.connect(sys.argv[1] + "/t.db")
        db.execute("create table t(x)")
        db.execute("insert into t values (42)")
        db.commit()
        print(db.execute("select x from t").fetchone()[0])
        f = open(sys.argv[1] + "/held", "r+")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("locked")
        except OSError as e:
            print("busy", e.errno)
        g = open(sys.argv[1] + "/free", "r+")
        fcntl.lockf(g, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(g, fcntl.LOCK_SH)
        print("free locked")
        """
        let (outcome, stdout, stderr, _) = try Self.python(script, [directory], grants: [FileGrant(hostPath: directory, writable: true)])
        #expect(outcome == .exited(status: 0), "\(stderr)")
        #expect(stdout == "42\nbusy 11\nfree locked\n")
    }
}

extension KVMTests.Compatibility {
    /// Mounts nest by depth: a grant inside an in-memory directory shows through it (it once hid
    /// every grant beneath it), the way to it exists, and its root cannot be removed.
    @Test func grantsInsideAnInMemoryDirectoryShowThrough() throws {
        let directory = LinuxFixtures.scratch("nested")
        try Data("through".utf8).write(to: URL(fileURLWithPath: directory + "/file"))
        let script = """
        import os, tempfile
        print(open("/memory/a/data/file").read(), sorted(os.listdir("/memory")), sorted(os.listdir("/memory/a")))
        with tempfile.NamedTemporaryFile(dir="/memory", delete=False) as f: f.write(b"x")
        try: os.rmdir("/memory/a/data")
        except OSError as e: print("rmdir", e.errno)
        try: os.rmdir("/memory/a")
        except OSError as e: print("rmdir-way", e.errno)
        """
        let (outcome, stdout, stderr, _) = try Self.python(script, grants: [FileGrant(hostPath: directory, guestPath: "/memory/a/data")],
                                                           memoryDirectories: ["/memory"])
        #expect(outcome == .exited(status: 0), "\(stderr)")
        #expect(stdout == "through ['a'] ['data']\nrmdir 16\nrmdir-way 16\n")
    }
}

extension KVMTests.Compatibility {
    /// A Rust program built with `+crt-static` (a glibc static-PIE with R_X86_64_IRELATIVE
    /// relocations, which its own start-up applies) loads and runs; it was refused at load.
    @Test func staticPIEWithIRelativeRelocationsRuns() throws {
        let directory = LinuxFixtures.scratch("irelative")
        let source = directory + "/main.rs", output = directory + "/main"
        try Data("fn main() { let v: Vec<u64> = (1..10).collect(); println!(\"sum {}\", v.iter().sum::<u64>()); }\n".utf8)
            .write(to: URL(fileURLWithPath: source))
        let status = GuestToolchain.spawn(["rustc", "-O", "-C", "target-feature=+crt-static", "-o", output, source], discardingOutput: true)
        try #require(status == 0, "rustc failed with status \(status)")
        let (outcome, stdout, stderr) = try LinuxFixtures.run(output, [])
        #expect(outcome == .exited(status: 0), "\(stderr)")
        #expect(stdout == "sum 45\n")
    }
}

extension KVMTests.Compatibility {
    /// CPUID and XGETBV agree with the XCR0 the vCPU has, on PVM too (its CPUID once said
    /// OSXSAVE = 0, so glibc, GCC's __builtin_cpu_supports and numpy picked SSE code): a guest
    /// with AVX on the host sees OSXSAVE, YMM state in XCR0 and AVX as usable, and the user-mode
    /// instruction sets the host has (LZCNT, AVX2, BMI2).
    @Test func theGuestSeesTheVectorUnitsItHas() throws {
        let (outcome, stdout, stderr) = try LinuxFixtures.run(try ThreadPrograms.c("cpu-identity"), [])
        #expect(outcome == .exited(status: 0), "\(stderr)")
        let hostAVX = X86CPUIdentity.cpuid(1).ecx & (1 << 28) != 0 && X86CPUIdentity.cpuid(1).ecx & (1 << 26) != 0
        let first = hostAVX ? "osxsave=1 avx=1 ymm=1 builtin-avx=1" : "osxsave=\(stdout.hasPrefix("osxsave=1") ? 1 : 0) avx=0 ymm=\(stdout.contains("ymm=1") ? 1 : 0) builtin-avx=0"
        // User-mode instruction sets the host has (LZCNT was missing under PVM: numpy then dropped AVX2/AVX-512).
        let extended = X86CPUIdentity.cpuid(0x8000_0001).ecx, leaf7 = X86CPUIdentity.cpuid(7).ebx
        let second = "lzcnt=\(extended >> 5 & 1) avx2=\(hostAVX ? leaf7 >> 5 & 1 : 0) bmi2=\(leaf7 >> 8 & 1)"
        #expect(stdout == first + "\n" + second + "\n")
    }
}

extension KVMTests.Compatibility {
    /// socketpair (AF_UNIX, without a network permission): bytes cross it, and asyncio (whose
    /// event loop's self-pipe is one) runs.
    @Test func socketPairsAndAsyncio() throws {
        let (outcome, stdout, stderr, _) = try Self.python("""
            import asyncio, socket
            a, b = socket.socketpair()
            a.sendall(b"ping")
            print(b.recv(4).decode())
            async def main():
                await asyncio.sleep(0.01)
                return "asyncio"
            print(asyncio.run(main()))
            """)
        #expect(outcome == .exited(status: 0), "\(stderr)")
        #expect(stdout == "ping\nasyncio\n")
    }
}
