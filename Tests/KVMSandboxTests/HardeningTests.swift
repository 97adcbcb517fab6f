import Foundation
@testable import KVMSandbox
import KVMSandboxTools
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension KVMTests {
    /// Regression tests for the hardening issue: each of these once crashed, hung or misled the host.
    @Suite struct Hardening {
        /// Memory calls over huge ranges of nothing (32 TiB, a 1 TiB reservation) return at once.
        @Test func madviseOverAHugeRangeIsQuick() throws {
            let started = Date()
            let (outcome, stdout, _) = try LinuxFixtures.run(try ThreadPrograms.c("madvise-huge"), [])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "r=0 p0=1 fast=1\nreserve=1 protect=0 fixed=1 munmap=0\n")
            #expect(Date().timeIntervalSince(started) < 10)
        }

        func run(_ mode: String, configure: (inout SandboxConfiguration) -> Void = { _ in }) throws -> (RunOutcome, String, String) {
            try Guests.run("hardening", [mode], configure: configure)
        }

        /// Signal numbers outside 1...64 are -EINVAL, as on Linux (0x7fffffff once overflowed
        /// `128 + signal` in the exit status and killed the host).
        @Test(arguments: ["tkill-huge", "tkill-negative", "kill-65", "tgkill-huge"])
        func signalNumbersOutOfRangeAreEINVAL(mode: String) throws {
            let (outcome, stdout, _) = try run(mode)
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "result=-22\n")
        }

        @Test func outcomesWithAnySignalNumberHaveAnExitStatus() {
            for signal in [Int32.min, -128, 0, 65, Int32.max] {
                #expect(RunOutcome.signaled(signal: signal).exitStatus == ExitStatus.abiViolation)
                #expect(RunReport(.signaled(signal: signal)).exitStatus == ExitStatus.abiViolation)
            }
            #expect(RunOutcome.signaled(signal: 6).exitStatus == 134)
            #expect(RunOutcome.hostFailure("KVM_RUN failed").exitStatus == ExitStatus.hostFailure)
            #expect(RunReport(.hostFailure("x")).outcome == "hostFailure")
        }

        /// munmap above the mmap region (stack, stub, mailbox, GDT, the top of the address space)
        /// once underflowed `mmapTop - address`.
        @Test(arguments: ["munmap-stack", "munmap-stub", "munmap-mailbox", "munmap-gdt", "munmap-top"])
        func munmapAboveTheMmapRegionIsEINVAL(mode: String) throws {
            let (outcome, stdout, _) = try run(mode)
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "result=-22\n")
        }

        /// mprotect never hands the guest a host page: supervisor-only ones (GDT, IDT: once made
        /// user-writable by `mprotect(RW)`), the stubs, the mailbox, the vDSO and its clock data
        /// are EACCES, and stay as they were.
        @Test(arguments: ["mprotect-gdt", "mprotect-idt", "mprotect-stub", "mprotect-mailbox", "mprotect-vdso", "mprotect-vdso-data"])
        func mprotectNeverHandsOverAHostPage(mode: String) throws {
            let (outcome, stdout, _) = try run(mode)
            #expect(outcome == .exited(status: 0), "\(stdout)")
            #expect(stdout == "result=-13\n")
        }

        /// `outsb` and `rep outsb` to port 0x42 exit like `out %al, $0x42`; only the latter is a host call.
        @Test(arguments: ["outsb", "rep-outsb"])
        func stringOutputToTheHostCallPortIsAnABIViolation(mode: String) throws {
            let (outcome, stdout, _) = try run(mode)
            guard case .abiViolation(let message) = outcome else {
                Issue.record("expected an ABI violation, got \(outcome) (\(stdout))")
                return
            }
            #expect(message.contains("port 0x42"))
        }

        /// A guest writing into a pipe nobody reads gets -EPIPE; the host process (this test
        /// runner) is not killed by SIGPIPE.
        @Test func outputIntoAClosedPipeIsEPIPEForTheGuest() throws {
            var fds: [Int32] = [-1, -1]
            #expect(pipe(&fds) == 0)
            close(fds[0])
            defer { close(fds[1]) }
            let (outcome, _, stderr) = try run("flood") { $0.standardOutput = .fileDescriptor(fds[1]) }
            #expect(outcome == .exited(status: 3))
            #expect(stderr == "write: -32\n")
        }

        /// A reader that never reads cannot hold the guest past its deadline.
        @Test func outputIntoAFullPipeDoesNotOutliveTheTimeout() throws {
            var fds: [Int32] = [-1, -1]
            #expect(pipe(&fds) == 0)
            defer { close(fds[0]); close(fds[1]) }
            let (outcome, _, _) = try run("flood") {
                $0.standardOutput = .fileDescriptor(fds[1])
                $0.timeout = 0.5
            }
            guard case .timedOut = outcome else {
                Issue.record("expected a timeout, got \(outcome)")
                return
            }
        }

        /// A service that reached ks_ready() with RSP = 0x80 once crashed the host on the next call.
        @Test func callsIntoAGuestPausedWithAWildStackAreRefused() async throws {
            var configuration = SandboxConfiguration()
            configuration.arguments = ["service", "wild-ready"]
            configuration.standardOutput = .capture
            configuration.timeout = 20
            let snapshot = try Snapshot(elfPath: try Guests.build("service"), configuration: configuration)
            let vm = try snapshot.fork()
            #expect(throws: SandboxError.self) { try vm.call("add", 1, 2) }
            #expect(throws: SandboxError.self) { try vm.call("sum_bytes", .bytes([1, 2, 3]), 3) }
            let pool = try SandboxPool(snapshot: snapshot, capacity: 1)
            await #expect(throws: SandboxError.self) { try await pool.withSandbox { try $0.call("add", 1, 2) } }
        }

        /// A static-PIE whose PT_PHDR address wraps when relocated is refused.
        @Test func aWrappingProgramHeaderAddressIsRefused() throws {
            var bytes = try readBytes(try Guests.build("pie", flags: ["-O2", "-static-pie"]))
            let phoff = Int(bytes.integer(UInt64.self, at: 32)), count = Int(bytes.integer(UInt16.self, at: 56))
            let spare = try #require((0..<count).map { phoff + $0 * 56 }.first {
                ![1, 2].contains(bytes.integer(UInt32.self, at: $0))  // not PT_LOAD, not PT_DYNAMIC
            })
            bytes = bytes.patching(UInt32(6), at: spare).patching(UInt64.max - 0xfff, at: spare + 16)
            #expect(throws: SandboxError.self) { try Sandbox(elf: try ELFFile(bytes: bytes)) }
        }

        /// 2,000 PT_LOADs of 64 MiB each in a small file are refused before any per-page work.
        @Test func manyHugeSegmentsAreRefusedCheaply() throws {
            let good = try Guests.bytes("args")
            let phoff = Int(good.integer(UInt64.self, at: 32)), count = Int(good.integer(UInt16.self, at: 56))
            var table = Array(good[phoff..<phoff + count * 56])
            for index in 0..<2000 {
                var header = [UInt8](repeating: 0, count: 56).patching(UInt32(1), at: 0).patching(UInt32(4), at: 4)
                header = header.patching(UInt64(0x1_0000_0000) + UInt64(index) * (64 << 20), at: 16)
                header = header.patching(UInt64(64 << 20), at: 40).patching(UInt64(4096), at: 48)
                table += header
            }
            let bytes = (good + table).patching(UInt64(good.count), at: 32).patching(UInt16(count + 2000), at: 56)
            let elf = try ELFFile(bytes: bytes)
            var configuration = SandboxConfiguration()
            configuration.memorySize = 64 << 20
            #expect {
                try Sandbox(elf: elf, configuration: configuration)
            } throws: { error in
                if case SandboxError.outOfGuestMemory = error { return true }
                return false
            }
        }

        /// Symbols sharing one long name cannot make the host hold their names many times over.
        @Test func symbolNamesAreBounded() throws {
            let nameLength = 1000, count = 200_000
            // An ELF header, a string table holding one long name, and a symbol table.
            var strings = [UInt8](repeating: 0, count: 1) + [UInt8](repeating: UInt8(ascii: "a"), count: nameLength) + [0]
            strings += [UInt8](repeating: 0, count: (8 - strings.count % 8) % 8)
            var symbols = [UInt8](repeating: 0, count: 24)  // the null symbol
            let entry = [UInt8](repeating: 0, count: 24).patching(UInt32(1), at: 0).patching(UInt8(2), at: 4)
            for index in 0..<count { symbols += entry.patching(UInt64(0x401000 + index), at: 8) }
            let good = try Guests.bytes("args")
            let stringsOffset = good.count, symbolsOffset = stringsOffset + strings.count
            let sectionsOffset = symbolsOffset + symbols.count
            var sections = [UInt8](repeating: 0, count: 64)  // SHN_UNDEF
            sections += [UInt8](repeating: 0, count: 64).patching(UInt32(3), at: 4)
                .patching(UInt64(stringsOffset), at: 24).patching(UInt64(strings.count), at: 32)
            sections += [UInt8](repeating: 0, count: 64).patching(UInt32(2), at: 4)
                .patching(UInt64(symbolsOffset), at: 24).patching(UInt64(symbols.count), at: 32)
                .patching(UInt32(1), at: 40).patching(UInt64(24), at: 56)
            let bytes = (good + strings + symbols + sections).patching(UInt64(sectionsOffset), at: 40)
                .patching(UInt16(64), at: 58).patching(UInt16(3), at: 60)
            let elf = try ELFFile(bytes: bytes)
            #expect(elf.symbols.symbols.count <= SymbolTable.nameBudget / nameLength)
            #expect(elf.symbols.symbols.count > 0)
        }

        /// The timeout covers loading: a deadline that passes while the program loads ends there.
        @Test func theTimeoutCoversLoading() throws {
            var configuration = SandboxConfiguration()
            configuration.timeout = 1e-9
            #expect(throws: SandboxError.loadTimedOut) { try Sandbox(elfPath: try Guests.build("args"), configuration: configuration) }
        }

        /// Devices, pipes and directories are refused before a byte is read (`/dev/zero` once
        /// read 1 GiB before being refused).
        @Test(arguments: ["/dev/zero", "/dev/urandom", "/tmp"])
        func nonRegularFilesAreRefusedAsPrograms(path: String) throws {
            #expect {
                try Sandbox(elfPath: path)
            } throws: { error in
                "\(error)".contains("not a regular file")
            }
        }

        /// The guest's own arguments are split off before the CLI parser sees them (its cost grows
        /// with the square of their number), and sizes that would wrap are refused.
        @Test func theCLIHandlesManyArgumentsAndRefusesWrappingSizes() throws {
            let cli = Guests.repository.appendingPathComponent(".build/debug/kvmsandbox").path
            try #require(FileManager.default.isExecutableFile(atPath: cli), "build the CLI first (swift build)")
            let hello = try Guests.build("hello", source: Guests.repository.appendingPathComponent("Examples/hello.c").path)
            let many = (0..<20_000).map { "a\($0)" }
            #expect(GuestToolchain.spawn([cli, "run", "--stack", "8192", "--env", "A=1", hello] + many, discardingOutput: true) == 20_000 & 0xff)
            for options in [["--memory", "17592186044480"], ["--stack", "18014398509482048"], ["--timeout", "-1"],
                            ["--memory", "0"], ["--timeout", "nan"]] {
                #expect(GuestToolchain.spawn([cli, "run"] + options + [hello], discardingOutput: true) == 64, "\(options)")
            }
            #expect(GuestToolchain.spawn([cli, "call", "--forks=-1", hello, "main"], discardingOutput: true) == 64)
        }
    
        /// Vector and FPU state belong to the snapshot: a fork starts from it, and a reset puts it
        /// back (once, xmm registers, MXCSR and the x87 state leaked from request to request).
        @Test(arguments: DirtyTracking.allCases)
        func floatingPointStateIsPartOfTheSnapshot(_ tracking: DirtyTracking) throws {
            let snapshot = try Snapshots.snapshot()
            let probes = ["read_xmm0", "read_xmm7", "read_xmm15", "read_mxcsr", "read_x87_control", "read_x87_status"]
            func state(_ vm: Sandbox) throws -> [RunOutcome] { try probes.map { try vm.call($0) } }
            let fresh = try snapshot.fork(tracking: tracking)
            let pristine = try state(fresh)
            #expect(pristine[1] == .returned(0x5eed5eed))  // set before ks_ready()
            #expect(pristine[3] == .returned(0x9f80))      // flush-to-zero, set before ks_ready()
            #expect(try fresh.call("set_fpu_secret", 0x5ec7e7) == .returned(0))
            let dirty = try state(fresh)
            #expect(dirty[0] == .returned(0x5ec7e7) && dirty[3] == .returned(0x7f80 | 0x6000))
            try fresh.reset()
            #expect(try state(fresh) == pristine)
            #expect(try state(try snapshot.fork(tracking: tracking)) == pristine)
        }
    
        /// The paranoid check sees what a request changed, and nothing after a reset, whatever
        /// the request did (returned, faulted, timed out, exited).
        @Test func theParanoidCheckSeesChangesAndResetsUndoThem() throws {
            let snapshot = try Snapshots.snapshot(timeout: 0.3)
            let vm = try snapshot.fork()
            #expect(try vm.differencesFromSnapshot() == [])
            #expect(try vm.call("write_secret", .string("s3cret")) == .returned(1))
            #expect(try vm.call("set_fpu_secret", 7) == .returned(0))
            let changed = try vm.differencesFromSnapshot()
            #expect(changed.contains { $0.contains("guest page") })
            #expect(changed.contains { $0.contains("x87/SSE") })
            try vm.reset()
            #expect(try vm.differencesFromSnapshot() == [])
            for function in ["crash", "probe", "spin", "quit"] {
                _ = try vm.call(function, 1)
                try vm.reset()
                #expect(try vm.differencesFromSnapshot() == [], "after \(function)")
            }
        }
    
        /// Found by the host-call fuzzer: a C string at the very end of the address space once
        /// overflowed the page arithmetic in `readCString`.
        @Test func guestMemoryAtTheEndOfTheAddressSpaceIsAFault() throws {
            let sandbox = try Sandbox(elfPath: try Guests.build("args"))
            for address: UInt64 in [.max, .max - 5, .max - 4095, 1 << 47, (1 << 47) - 1] {
                #expect(throws: GuestMemoryError.self) { try sandbox.guestMemory.readCString(address, maxLength: 8192) }
                #expect(throws: GuestMemoryError.self) { try sandbox.guestMemory.read(address, count: 16) }
                #expect(throws: GuestMemoryError.self) { try sandbox.guestMemory.write([1, 2, 3], to: address) }
            }
        }

        /// The syscall-fuzzing guest: random built-in and unknown calls with boundary arguments,
        /// by `syscall` and by `out`; every call must return and the guest end normally.
        @Test(arguments: [1, 2, 3])
        func theSyscallFuzzingGuestRunsToTheEnd(seed: Int) throws {
            let (outcome, _, stderr) = try Guests.run("syscall-fuzz", ["\(seed)", "3000"]) {
                $0.standardOutput = .discard
                $0.memoryDirectories = ["/tmp"]  // so random paths can create, write and remove files
                $0.timeout = 120
            }
            #expect(outcome == .exited(status: 0))
            #expect(stderr.hasSuffix("3000 calls returned\n"))
        }
    }
}
