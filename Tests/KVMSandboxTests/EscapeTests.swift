import Foundation
@testable import KVMSandbox
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Int32 {
    /// Closes a descriptor `creat` or `open` returned (nothing for -1).
    func closingIfOpen() -> Int32 { self >= 0 ? close(self) : self }
}

extension KVMTests {
    /// Security round 3: a hostile guest must not change a host file outside its grants. Each test
    /// failed before its fix (`Tests/Guests/escapes.c`, built with musl).
    @Suite struct Escapes {
        func run(_ arguments: [String], grants: [FileGrant], tmpfs: [String] = []) throws -> (RunOutcome, String) {
            let (outcome, stdout, _) = try Guests.run("escapes", arguments) { configuration in
                configuration.files = grants
                configuration.memoryDirectories = tmpfs
                configuration.systemLibraries = false
            }
            return (outcome, stdout)
        }

        static func mode(_ path: String) -> mode_t {
            var status = stat()
            return lstat(path, &status) == 0 ? status.st_mode : 0
        }

        static func exists(_ path: String) -> Bool { mode(path) != 0 }

        /// The host process's umask, read without changing it (`/proc/self/status`).
        static var hostUmask: mode_t {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("Umask:") } ?? "Umask: 022"
            return mode_t(line.split(separator: "\t").last.flatMap { UInt32($0.trimmingCharacters(in: .whitespaces), radix: 8) } ?? 0o022)
        }

        /// Files and directories the guest creates never carry setuid, setgid or sticky bits, the
        /// host's umask applies on top of the guest's, and an existing setuid file the guest
        /// writes loses its bits (as a write by an unprivileged Linux process does).
        @Test func createdFilesNeverCarrySpecialBits() throws {
            let directory = LinuxFixtures.scratch("setuid")
            let existing = directory + "/existing"
            _ = FileManager.default.createFile(atPath: existing, contents: Data("#!/bin/sh\n".utf8))
            chmod(existing, 0o6755)
            let (outcome, stdout) = try run(["setuid", directory], grants: [FileGrant(hostPath: directory, writable: true)])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "open=0 mkdir=0 rewrite=0\n")
            let umask = Self.hostUmask
            for path in ["suid", "sdir", "existing"].map({ directory + "/" + $0 }) {
                let mode = Self.mode(path)
                #expect(mode & 0o7000 == 0, "\(path) has mode \(String(mode, radix: 8))")
                #expect(mode & umask == 0, "\(path): mode \(String(mode, radix: 8)) ignores the host umask \(String(umask, radix: 8))")
            }
        }

        /// unlink, mkdir, rmdir, rename and open(O_CREAT) through a link (absolute, relative,
        /// dangling, or to a read-only grant nested in the writable one) decide writability from
        /// the grant the final directory lies in: EROFS, or EXDEV for a rename across grants.
        @Test func nameChangesThroughLinksIntoReadOnlyGrants() throws {
            let root = LinuxFixtures.scratch("links")
            let ro = root + "/ro", rw = root + "/rw"
            let manager = FileManager.default
            for directory in [ro + "/keep", rw + "/innerro", rw + "/sub"] {
                try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            for file in [ro + "/victim", rw + "/mine", rw + "/innerro/victim", rw + "/sub/scratch"] {
                _ = manager.createFile(atPath: file, contents: Data("x".utf8))
            }
            try manager.createSymbolicLink(atPath: rw + "/abs", withDestinationPath: ro)
            try manager.createSymbolicLink(atPath: rw + "/rel", withDestinationPath: "../ro")
            try manager.createSymbolicLink(atPath: rw + "/dangling", withDestinationPath: ro + "/newfile")
            try manager.createSymbolicLink(atPath: rw + "/inner-link", withDestinationPath: "innerro")
            try manager.createSymbolicLink(atPath: rw + "/own-link", withDestinationPath: "sub")
            let (outcome, stdout) = try run(["links", rw], grants: [
                FileGrant(hostPath: ro), FileGrant(hostPath: rw, writable: true), FileGrant(hostPath: rw + "/innerro"),
            ])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "unlink-abs=EROFS unlink-rel=EROFS mkdir=EROFS rmdir=EROFS rename-out=EXDEV rename-in=EXDEV "
                    + "create=EROFS dangling=EROFS nested=EROFS own=0\n")
            for path in [ro + "/victim", ro + "/keep", rw + "/innerro/victim", rw + "/mine"] {
                #expect(Self.exists(path), "\(path) was removed")
            }
            for path in [ro + "/made", ro + "/planted", ro + "/created", ro + "/newfile", rw + "/stolen", rw + "/sub/scratch"] {
                #expect(!Self.exists(path), "\(path) exists")
            }
        }

        /// Grant roots (and the tmpfs root, /memory here: the scratch directories may lie in /tmp) are mount points: removing or renaming one is EBUSY
        /// (EROFS first when its parent is read-only, as Linux checks),
        /// a rename between two grants is EXDEV, as between two Linux mounts.
        @Test func grantRootsAreMountPoints() throws {
            let root = LinuxFixtures.scratch("mounts")
            let d = root + "/d", s = root + "/s"
            let manager = FileManager.default
            for directory in [d + "/out", s + "/inner"] {
                try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            _ = manager.createFile(atPath: s + "/evil", contents: Data("x".utf8))
            let (outcome, stdout) = try run(["mounts", d, s], grants: [
                FileGrant(hostPath: d), FileGrant(hostPath: d + "/out", writable: true),
                FileGrant(hostPath: s, writable: true), FileGrant(hostPath: s + "/inner", writable: true),
            ], tmpfs: ["/memory"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "out=EXDEV in=EXDEV rmdir=EROFS across=EXDEV inner=EBUSY inner-rmdir=EBUSY over-inner=EBUSY "
                    + "tmp=EBUSY tmp-rename=EXDEV\n")
            #expect(Self.exists(d + "/out") && Self.exists(s + "/inner") && Self.exists(s + "/evil"))
            #expect(!Self.exists(s + "/moved") && !Self.exists(s + "/renamed") && !Self.exists(d + "/out/evil"))
        }

        /// Reopening a read-only grant's file through /proc/self/fd for writing is refused at
        /// the open, as Linux refuses it on a read-only mount.
        @Test func procFdReopenKeepsTheGrantReadOnly() throws {
            let directory = LinuxFixtures.scratch("procfd")
            _ = FileManager.default.createFile(atPath: directory + "/f", contents: Data("x".utf8))
            let (outcome, stdout) = try run(["proc-fd", directory + "/f"], grants: [FileGrant(hostPath: directory)])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "rdwr=EROFS wronly=EROFS rdonly=0\n")
        }

        /// /dev/stdin, /dev/stdout and /dev/stderr exist (links to /proc/self/fd/0..2).
        @Test func standardStreamDevicesExist() throws {
            let (outcome, stdout) = try run(["dev-std"], grants: [])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "via /dev/stdout\nstdout=0 stdin->/proc/self/fd/0 stderr=0\n")
        }

        /// The host's resident memory, in bytes (`VmRSS`).
        static var residentBytes: Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return (line.split(separator: " ").compactMap { Int($0) }.first ?? 0) << 10
        }

        /// 100 open descriptors of a 20,000-entry directory (4.7 MB of records): the host keeps
        /// no listing per descriptor (it once read each whole, ~470 MB here), and reading,
        /// telldir/seekdir and rewinddir still see every entry.
        @Test func directoryListingsAreNotKeptInHostMemory() throws {
            let directory = LinuxFixtures.scratch("listing")
            let padding = String(repeating: "n", count: 200)
            for index in 0..<20_000 { _ = creat(directory + "/\(index)-\(padding)", 0o644).closingIfOpen() }
            let before = Self.residentBytes
            let (outcome, stdout) = try run(["listings", directory, "100"], grants: [FileGrant(hostPath: directory)])
            let growth = Self.residentBytes - before
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "opened=100 count=20002 again=20002 seek=1\n")
            #expect(growth < 64 << 20, "the host grew by \(growth >> 20) MiB")
        }

        /// ASLR: every fresh VM of a static-PIE program gets its own stack, heap, mmap and
        /// program addresses (and AT_RANDOM); with `randomizeLayout` off every run has the same.
        @Test func everyFreshVMGetsItsOwnLayout() throws {
            let program = try Guests.build("escapes", flags: ["-O2", "-static-pie"])
            func layout(_ randomize: Bool) throws -> [String] {
                var configuration = SandboxConfiguration()
                configuration.arguments = ["escapes", "layout"]
                configuration.standardOutput = .capture
                configuration.timeout = 20
                configuration.randomizeLayout = randomize
                let sandbox = try Sandbox(elfPath: program, configuration: configuration)
                #expect(try sandbox.run() == .exited(status: 0))
                return String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self)
                    .split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
            }
            let runs = try (0..<4).map { _ in try layout(true) }
            for part in 0..<5 {
                let values = Set(runs.map { $0.count > part ? $0[part] : "" })
                #expect(values.count >= 3, "\(runs.map { $0.count > part ? $0[part] : "" }) barely changed")
            }
            let fixed = try (0..<2).map { _ in try layout(false) }
            #expect(fixed[0].prefix(4) == fixed[1].prefix(4))  // all but AT_RANDOM
            #expect(fixed[0][0].hasPrefix("stack=0x7fefffff"), "\(fixed[0])")  // just below the fixed stack top
        }

        /// tmpfs names count against its capacity: files with ~4 KiB paths stop at ENOSPC
        /// (16 MiB: ~4,000 of them) instead of growing the host by their names.
        @Test func inMemoryFileNamesCountAgainstTheCapacity() throws {
            let before = Self.residentBytes
            let (outcome, stdout) = try run(["tmpfs-names"], grants: [], tmpfs: ["/memory"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "created=some error=ENOSPC\n")
            #expect(Self.residentBytes - before < 96 << 20)
        }

        /// Pipes reserve their buffer in the host budget: with a 4 MiB budget pipe() fails with
        /// ENOMEM after a few dozen.
        @Test func pipesStopAtTheHostBudget() throws {
            let (outcome, stdout, _) = try Guests.run("escapes", ["pipes"]) { $0.hostMemoryLimit = 4 << 20 }
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "pipes=some error=ENOMEM\n")
        }

        /// `diskQuota`: writes stop at it (a short write, then ENOSPC), creating a directory
        /// needs room, and removing a file gives its room back.
        @Test func theDiskQuotaBoundsWhatTheGuestAdds() throws {
            let directory = LinuxFixtures.scratch("quota")
            let (outcome, stdout, _) = try Guests.run("escapes", ["disk", directory]) { configuration in
                configuration.files = [FileGrant(hostPath: directory, writable: true)]
                configuration.diskQuota = 1 << 20
            }
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "written=some error=ENOSPC mkdir=ENOSPC unlink=0 mkdir-after=0 rewrite=0\n")
        }

        /// Storms: 5,000 self-sent signals, an eventfd pushed to overflow, 10,000 futex calls
        /// on words nobody waits on, a 1 us interval timer, epoll sets until the descriptors run
        /// out; each answered as Linux answers it, and the run ends normally.
        @Test func signalEventfdFutexTimerAndEpollStorms() throws {
            let (outcome, stdout, _) = try Guests.run("escapes", ["storms"]) { $0.timeout = 60 }
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "signals=5000 eventfd=8,EAGAIN futex=0,5000,0 alarms=many epoll=many,EMFILE\n")
        }

        /// Arguments and environment near the limit: what fits a quarter of the stack starts,
        /// what does not is refused before the VM runs (never a trap, never a partial stack).
        @Test func argumentsAndEnvironmentNearTheLimit() throws {
            let program = try Guests.build("escapes")
            var configuration = SandboxConfiguration()
            configuration.arguments = ["escapes", "thread"] + Array(repeating: String(repeating: "a", count: 100), count: 1500)
            configuration.environment = (0..<500).map { "V\($0)=" + String(repeating: "v", count: 40) }
            configuration.standardOutput = .capture
            configuration.timeout = 20
            let sandbox = try Sandbox(elfPath: program, configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 0))
            configuration.arguments = ["escapes"] + Array(repeating: String(repeating: "b", count: 1000), count: 300)
            #expect(throws: SandboxError.self) { try Sandbox(elfPath: program, configuration: configuration) }
            configuration.arguments = ["escapes"]
            configuration.environment = Array(repeating: "E=", count: 20_000)
            #expect(throws: SandboxError.self) { try Sandbox(elfPath: program, configuration: configuration) }
        }

        /// symlink and link: a link to /etc/shadow is made but leads nowhere (links are
        /// followed in the guest's namespace); hard links stay inside one writable grant (EXDEV
        /// from a read-only grant, EROFS into one).
        @Test func symbolicAndHardLinksStayInsideTheGrant() throws {
            let root = LinuxFixtures.scratch("make-links")
            let rw = root + "/rw", ro = root + "/ro"
            for directory in [rw, ro] { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
            _ = FileManager.default.createFile(atPath: rw + "/mine", contents: Data("m".utf8))
            _ = FileManager.default.createFile(atPath: ro + "/r", contents: Data("r".utf8))
            let (outcome, stdout) = try run(["make-links", rw, ro], grants: [FileGrant(hostPath: rw, writable: true), FileGrant(hostPath: ro)])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "symlink=0 through=ENOENT relative=0 read=0 link=0 from-ro=EXDEV into-ro=EXDEV symlink-ro=EROFS\n")
            var status = stat()
            #expect(stat(rw + "/mine", &status) == 0 && status.st_nlink == 2)
            #expect(!Self.exists(rw + "/stolen") && !Self.exists(ro + "/planted"))
        }

        /// musl's `pthread_create` passes CLONE_DETACHED, which Linux ignores.
        @Test func muslThreadsStart() throws {
            let (outcome, stdout) = try run(["thread"], grants: [])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "create=0 joined=42\n")
        }
    }
}
