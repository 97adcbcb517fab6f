import Foundation
import KVMSandbox
import KVMSandboxTools
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A directory of test data, made once per test process: fruit.txt, b.txt, and a symbolic link
/// pointing out of it (at /etc/passwd).
enum LinuxFixtures {
    static let data: String = {
        let url = Guests.outputDirectory.appendingPathComponent("data")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        try? Data("banana\napple\ncherry\n".utf8).write(to: url.appendingPathComponent("fruit.txt"))
        try? Data("hello\n".utf8).write(to: url.appendingPathComponent("b.txt"))
        try? FileManager.default.createSymbolicLink(atPath: url.appendingPathComponent("escape-link").path, withDestinationPath: "/etc/passwd")
        _ = mkfifo(url.appendingPathComponent("fifo").path, 0o644)  // opening it must not block the host
        return url.path
    }()

    /// A fresh, empty writable directory.
    static func scratch(_ name: String) -> String {
        let url = Guests.outputDirectory.appendingPathComponent("scratch-\(name)-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url.path
    }

    /// `Tests/Guests/linux-files.c` built as an ordinary static program: with glibc or musl.
    static func program(_ libc: String) throws -> String {
        let source = Guests.testsDirectory.deletingLastPathComponent().appendingPathComponent("Guests/linux-files.c").path
        let output = Guests.outputDirectory.appendingPathComponent("linux-files-\(libc)").path
        if !FileManager.default.fileExists(atPath: output) {
            let compiler = libc == "glibc" ? "gcc" : "musl-gcc"
            let status = GuestToolchain.spawn([compiler, "-static", "-O2", "-o", output, source], discardingOutput: true)
            try #require(status == 0, "\(compiler) -static failed with status \(status)")
        }
        return output
    }

    /// Runs an unmodified Linux program with output captured.
    static func run(_ path: String, _ arguments: [String], input: InputSource = .empty, grants: [FileGrant] = [],
                    cwd: String? = nil, environment: [String] = [], memory: UInt64? = nil, systemView: Bool = false,
                    setUp: (Sandbox) throws -> Void = { _ in }) throws -> (outcome: RunOutcome, stdout: String, stderr: String) {
        var configuration = SandboxConfiguration()
        // These tests check the grants alone; the default system view has tests of its own.
        configuration.systemView = systemView
        configuration.arguments = [path] + arguments
        configuration.environment = environment
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        configuration.standardInput = input
        configuration.files = grants
        configuration.workingDirectory = cwd
        if let memory { configuration.memorySize = memory }
        configuration.timeout = 30
        let sandbox = try Sandbox(elfPath: path, configuration: configuration)
        try setUp(sandbox)
        let outcome = try sandbox.run()
        return (outcome, String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self),
                String(decoding: sandbox.capturedOutput(fd: 2), as: UTF8.self))
    }
}

extension KVMTests {
    /// Unmodified static Linux programs on the Linux personality: busybox from Debian, and C
    /// programs built with glibc and musl without the SDK. Output must equal a native run's.
    @Suite struct Linux {
        static let busybox = "/bin/busybox"

        func busybox(_ arguments: [String], input: InputSource = .empty, grants: [FileGrant] = [], cwd: String? = nil) throws -> (RunOutcome, String, String) {
            try #require(FileManager.default.isExecutableFile(atPath: Self.busybox), "install busybox-static (Scripts/setup does)")
            return try LinuxFixtures.run(Self.busybox, arguments, input: input, grants: grants, cwd: cwd)
        }

        @Test func busyboxShellArithmetic() throws {
            let (outcome, stdout, _) = try busybox(["sh", "-c", "x=$((6*7)); echo \"v=$x\""])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "v=42\n")
        }

        @Test func busyboxSha256OfStandardInput() throws {
            let (outcome, stdout, _) = try busybox(["sha256sum"], input: .bytes(Array("abc".utf8)))
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  -\n")
        }

        @Test(arguments: [
            (["ls"], "b.txt\nescape-link\nfifo\nfruit.txt\n"),
            (["cat", "fruit.txt"], "banana\napple\ncherry\n"),
            (["wc", "-l", "fruit.txt"], "3 fruit.txt\n"),
            (["sort", "fruit.txt"], "apple\nbanana\ncherry\n"),
            (["grep", "an", "fruit.txt"], "banana\n"),
        ])
        func busyboxToolsOverAReadOnlyDirectory(arguments: [String], expected: String) throws {
            let data = LinuxFixtures.data
            let (outcome, stdout, _) = try busybox(arguments, grants: [FileGrant(hostPath: data)], cwd: data)
            #expect(outcome == .exited(status: 0))
            #expect(stdout == expected)
        }

        @Test func busyboxCopiesIntoAWritableDirectoryOnly() throws {
            let data = LinuxFixtures.data, out = LinuxFixtures.scratch("cp")
            let grants = [FileGrant(hostPath: data), FileGrant(hostPath: out, writable: true)]
            let (outcome, _, _) = try busybox(["cp", "fruit.txt", "\(out)/copy.txt"], grants: grants, cwd: data)
            #expect(outcome == .exited(status: 0))
            #expect(try String(contentsOfFile: "\(out)/copy.txt", encoding: .utf8) == "banana\napple\ncherry\n")
            let (refused, _, stderr) = try busybox(["cp", "\(out)/copy.txt", "\(data)/new.txt"], grants: grants, cwd: data)
            #expect(refused == .exited(status: 1))
            #expect(stderr.contains("Read-only file system"))
            #expect(!FileManager.default.fileExists(atPath: "\(data)/new.txt"))
        }

        /// Files outside the grants do not exist; `..`, symbolic links and /proc cannot reach them.
        @Test func nothingOutsideTheGrantsExists() throws {
            let (outcome, _, stderr) = try busybox(["cat", "/etc/passwd"], grants: [FileGrant(hostPath: LinuxFixtures.data)])
            #expect(outcome == .exited(status: 1))
            #expect(stderr.contains("No such file or directory"))
        }

        @Test(arguments: ["glibc", "musl"])
        func stdioOnStandardInput(libc: String) throws {
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["stdin"], input: .bytes(Array("a\nbb\nccc\n".utf8)))
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "lines=3 bytes=9\n")
        }

        @Test(arguments: ["glibc", "musl"])
        func filesDirectoriesAndWrites(libc: String) throws {
            let data = LinuxFixtures.data, out = LinuxFixtures.scratch(libc)
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["files", data, out],
                                                             grants: [FileGrant(hostPath: data), FileGrant(hostPath: out, writable: true)])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "wrote 42 bytes: 3 lines, 4 entries\n")
            #expect(try String(contentsOfFile: "\(out)/result.txt", encoding: .utf8) == "3 lines; b.txt escape-link fifo fruit.txt\n")
        }

        @Test(arguments: ["glibc", "musl"])
        func privateFileMapping(libc: String) throws {
            let data = LinuxFixtures.data
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["mmap", "\(data)/fruit.txt"],
                                                             grants: [FileGrant(hostPath: data)])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "mapped: banana\n")
        }

        /// mprotect changes permissions for real and keeps W^X; bad ranges get Linux's errnos.
        @Test(arguments: ["glibc", "musl"])
        func memoryProtection(libc: String) throws {
            let program = try LinuxFixtures.program(libc)
            let (outcome, stdout, _) = try LinuxFixtures.run(program, ["mprotect"])
            #expect(outcome == .exited(status: 0))
            // musl's wrapper rounds an unaligned start down to its page; glibc passes it on.
            let unaligned = libc == "musl" ? "0" : "EINVAL"
            #expect(stdout == "ro=0 exec=0 stack-exec=EACCES rwx=EACCES unaligned=\(unaligned) wrapping=ENOMEM unmapped=ENOMEM still=data\n")
            let (jit, output, _) = try LinuxFixtures.run(program, ["jit"])
            #expect(jit == .exited(status: 0))
            #expect(output == "jit=42\n")
            let (fault, _, _) = try LinuxFixtures.run(program, ["write-readonly"])
            #expect(fault.fault?.vector == 14)
            #expect(fault.fault?.errorCode == 7)  // a user write to a present, read-only page
        }

        /// PROT_NONE reservations larger than the guest's memory cost nothing; MAP_FIXED and
        /// mprotect make parts accessible; MAP_FIXED over the stub page and executable anonymous
        /// memory are refused; a reserved page faults on access.
        @Test(arguments: ["glibc", "musl"])
        func reservationsAndFixedMappings(libc: String) throws {
            let program = try LinuxFixtures.program(libc)
            let (outcome, stdout, _) = try LinuxFixtures.run(program, ["reserve"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "fixed=at-hint:fixed protect=0 protected over-stub=ENOMEM exec-anon=EACCES\n")
            let (fault, _, _) = try LinuxFixtures.run(program, ["read-reserved"])
            #expect(fault.fault?.vector == 14)
        }

        /// A pipe between the program's own descriptors: data, EAGAIN when empty and non-blocking,
        /// end of file once the write end is closed, EPIPE without a reader.
        @Test(arguments: ["glibc", "musl"])
        func pipes(libc: String) throws {
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["pipe"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "wrote=5 read=5:hello empty=EAGAIN eof=0 broken=EPIPE fifo=1\n")
        }

        /// A blocking read of an empty pipe waits, as on Linux, and the deadline still ends the run.
        @Test func aBlockedPipeReadEndsAtTheDeadline() throws {
            let program = try LinuxFixtures.program("musl")
            var configuration = SandboxConfiguration()
            configuration.arguments = [program, "pipe-block"]
            configuration.timeout = 0.3
            let outcome = try Sandbox(elfPath: program, configuration: configuration).run()
            guard case .timedOut = outcome else {
                Issue.record("expected a timeout, got \(outcome)")
                return
            }
        }

        /// The guest starts in the host's directory when it can see it, else in `/`.
        @Test func theWorkingDirectoryFollowsTheHostWhereVisible() throws {
            let parent = FileManager.default.currentDirectoryPath
            let (_, inside, _) = try busybox(["pwd"], grants: [FileGrant(hostPath: parent)])
            #expect(inside == parent + "\n")
            let (_, outside, _) = try busybox(["pwd"], grants: [FileGrant(hostPath: LinuxFixtures.data)])
            #expect(outside == (LinuxFixtures.data.hasPrefix(parent + "/") ? parent : "/") + "\n")
            let (_, given, _) = try busybox(["pwd"], grants: [FileGrant(hostPath: LinuxFixtures.data)], cwd: LinuxFixtures.data)
            #expect(given == LinuxFixtures.data + "\n")
        }

        /// realloc of large blocks (glibc: mremap) keeps the contents.
        @Test(arguments: ["glibc", "musl"])
        func reallocOfLargeBlocks(libc: String) throws {
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["realloc"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "realloc kept=xxy\n")
        }

        @Test(arguments: ["glibc", "musl"])
        func theFileTableIsBounded(libc: String) throws {
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["emfile"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "opened 1021, then EMFILE\n")
        }

        /// `..`, absolute paths, /proc/self/root and cwd, and a symbolic link out of the grant all
        /// give ENOENT; a huge read count is safe; creating a file in a read-only grant is EROFS.
        @Test(arguments: ["glibc", "musl"])
        func escapesAreRefused(libc: String) throws {
            let data = LinuxFixtures.data
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["escape", data],
                                                             grants: [FileGrant(hostPath: data)])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == """
                ../../../../etc/passwd: ENOENT
                /etc/passwd: ENOENT
                /proc/self/root/etc/passwd: ENOENT
                escape-link: ENOENT
                /proc/self/cwd/fruit.txt: ENOENT
                /tmp/../etc/passwd: ENOENT
                fifo: EACCES
                huge read: ok
                edge read: 4 bana
                inaccessible read: EFAULT
                read-only read: EFAULT
                write to ro: EROFS

                """)
        }

        /// A file that shrinks under the guest (the host truncates it between two reads): reads
        /// past the new end are end of file, as on Linux, never stale bytes or a host error.
        @Test(arguments: ["glibc", "musl"])
        func filesChangingSizeUnderTheGuest(libc: String) throws {
            let directory = LinuxFixtures.scratch("shrink-\(libc)")
            let file = "\(directory)/shrinking.txt"
            try Data("0123456789".utf8).write(to: URL(fileURLWithPath: file))
            let (outcome, stdout, _) = try LinuxFixtures.run(try LinuxFixtures.program(libc), ["shrinking", file],
                                                             grants: [FileGrant(hostPath: directory)]) { sandbox in
                try sandbox.register(HostCallNumber.firstUserNumber) { _ in Int64(truncate(file, 2)) }
            }
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "first=4 host=0 second=0 size=2 beyond=0\n")
        }

        /// An in-memory /tmp: files, directories, renames and removals, with no host file touched.
        @Test(arguments: ["glibc", "musl"])
        func anInMemoryTemporaryDirectory(libc: String) throws {
            let program = try LinuxFixtures.program(libc)
            var configuration = SandboxConfiguration()
            configuration.arguments = [program, "tmpfs"]
            configuration.standardOutput = .capture
            configuration.memoryDirectories = ["/tmp"]
            configuration.systemView = false
            configuration.timeout = 20
            let sandbox = try Sandbox(elfPath: program, configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            #expect(String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self)
                    == "read made=0 moved=0 size=12 /tmp: d;/tmp/d: b;/: tmp; notempty=ENOTEMPTY removed=0 gone=ENOENT\n")
        }

        /// /proc/self/maps comes from the page tables: the program's code, the stack.
        @Test func procSelfMapsShowsTheRealMappings() throws {
            let (outcome, stdout, _) = try busybox(["cat", "/proc/self/maps"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout.contains("r-xp 00000000 00:00 0          /bin/busybox\n"))
            #expect(stdout.contains(" rw-p 00000000 00:00 0          [stack]\n"))  // its top is randomized (ASLR)
            #expect(!stdout.contains("7fffffff"))  // the GDT, IDT and stubs are not the guest's
        }

        /// A grant at another guest path (--volume), and embedder host calls unreachable by `syscall`.
        @Test func volumesMapHostPathsElsewhere() throws {
            let (outcome, stdout, _) = try busybox(["cat", "/srv/fruit.txt"], grants: [FileGrant(hostPath: LinuxFixtures.data, guestPath: "/srv")])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "banana\napple\ncherry\n")
        }
    }
}
