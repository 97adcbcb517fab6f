import Foundation
import KVMSandbox
import KVMSandboxTools
import Testing

/// Every test that touches /dev/kvm lives under this suite: it runs serially (so the leak check
/// sees only its own file descriptors) and is skipped, loudly, where there is no KVM.
@Suite(.serialized, .enabled(if: KVM.available, "no usable /dev/kvm: KVM tests skipped"))
struct KVMTests {}

extension KVMTests {
    @Suite struct Running {
        @Test func helloExampleExitsWithItsStatusAndPrints() throws {
            let path = try Guests.build("hello", source: Guests.repository.appendingPathComponent("Examples/hello.c").path)
            var configuration = SandboxConfiguration()
            configuration.arguments = ["hello", "a", "b", "c"]
            configuration.standardOutput = .capture
            let sandbox = try Sandbox(elfPath: path, configuration: configuration)
            #expect(try sandbox.run() == .exited(status: 3))
            let output = String(decoding: sandbox.capturedOutput(fd: 1), as: UTF8.self)
            #expect(output.contains("hello from a KVM micro-VM: 3 argument(s)"))
            #expect(output.contains("argv[3] = c"))
            #expect(output.contains("hello says hi"))
            #expect(sandbox.platform != .unknown)
        }

        @Test func argumentsEnvironmentAndAuxvReachTheGuest() throws {
            let (outcome, stdout, _) = try Guests.run("args", ["one", "two words"]) {
                $0.environment = ["HOME=/guest", "LANG=C"]
            }
            #expect(outcome == .exited(status: 3))
            #expect(stdout.contains("argv[0]=args\nargv[1]=one\nargv[2]=two words\n"))
            #expect(stdout.contains("env HOME=/guest\nenv LANG=C\n"))
            #expect(stdout.contains("HOME=/guest"))
            #expect(stdout.contains("pagesz=4096 random=yes phdr=yes"))
        }

        @Test func staticPIEIsRelocated() throws {
            // A real static-PIE (ET_DYN with musl's rcrt1.o), so the relocation path runs.
            let elf = try ELFFile(bytes: readBytes(try Guests.build("pie", flags: ["-O2", "-static-pie"])))
            #expect(elf.isPositionIndependent)
            #expect(elf.segments.contains { $0.type == 2 /* PT_DYNAMIC */ })
            let (outcome, stdout, _) = try Guests.run("pie", flags: ["-O2", "-static-pie"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "relocated pointers work\n")
        }

        @Test func runningTwiceIsAnError() throws {
            let sandbox = try Sandbox(elfPath: try Guests.build("args"), configuration: {
                var c = SandboxConfiguration(); c.standardOutput = .discard; return c
            }())
            _ = try sandbox.run()
            #expect(throws: SandboxError.alreadyFinished) { try sandbox.run() }
        }

        @Test func exitStatusIsTheLowByte() throws {
            let (outcome, _, _) = try Guests.run("attacks", ["exit-status"])
            #expect(outcome == .exited(status: 42))
            #expect(outcome.exitStatus == 42)
        }
    }

    @Suite struct Memory {
        @Test func mallocHeavyGuestWorks() throws {
            let (outcome, stdout, _) = try Guests.run("memory", ["churn"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "churn ok\n")
        }

        @Test func heapStopsAtTheMemoryLimitWithNull() throws {
            let (outcome, stdout, _) = try Guests.run("memory", ["exhaust"]) { $0.memorySize = 32 << 20 }
            #expect(outcome == .exited(status: 0))
            // 32 MiB in all: image, stack, tables take a little; the guest gets most of the rest, never more.
            let mib = Int(stdout.split(separator: " ")[2]) ?? -1
            #expect(mib >= 24 && mib < 32, "\(stdout)")
            #expect(stdout.hasSuffix("small=ok\n"))
        }

        @Test func programLargerThanMemoryIsRefused() throws {
            var configuration = SandboxConfiguration()
            configuration.memorySize = 1 << 20
            configuration.stackSize = 960 << 10
            #expect {
                try Sandbox(elfPath: try Guests.build("memory"), configuration: configuration)
            } throws: { error in
                if case SandboxError.outOfGuestMemory = error { return true }
                return false
            }
        }

        @Test func badConfigurationIsRejected() throws {
            var configuration = SandboxConfiguration()
            configuration.memorySize = 12345
            #expect(throws: SandboxError.self) { try Sandbox(elfPath: try Guests.build("args"), configuration: configuration) }
            configuration = SandboxConfiguration()
            configuration.timeout = -1
            #expect(throws: SandboxError.self) { try Sandbox(elfPath: try Guests.build("args"), configuration: configuration) }
        }
    }

    @Suite struct Limits {
        @Test func runawayLoopIsStoppedAtTheDeadline() throws {
            let start = ContinuousClock.now
            let (outcome, _, _) = try Guests.run("attacks", ["spin"]) { $0.timeout = 0.2 }
            let elapsed = ContinuousClock.now - start
            guard case .timedOut(let seconds, _) = outcome else {
                Issue.record("expected a timeout, got \(outcome)")
                return
            }
            #expect(seconds == 0.2)
            #expect(outcome.exitStatus == ExitStatus.timeout)
            #expect(elapsed < .seconds(5))
        }

        @Test func hostCallLoopIsStoppedAtTheDeadline() throws {
            let (outcome, _, _) = try Guests.run("attacks", ["hostcall-loop"]) { $0.timeout = 0.2 }
            guard case .timedOut = outcome else {
                Issue.record("expected a timeout, got \(outcome)")
                return
            }
        }

        @Test func outputIsCappedAtTheLimit() throws {
            let (outcome, stdout, _) = try Guests.run("hostcalls", ["write-ok"]) { $0.outputLimit = 4 }
            // The guest's stderr write is cut to 4 bytes; its own stdout report then fails with EFBIG.
            #expect(outcome == .exited(status: 1))
            #expect(stdout.isEmpty)
        }
    }

    @Suite struct Resources {
        @Test func hundredSandboxesLeaveNoFileDescriptorOrMappingBehind() throws {
            let path = try Guests.build("args")
            var configuration = SandboxConfiguration()
            configuration.standardOutput = .discard
            configuration.timeout = 10
            func once() throws { _ = try Sandbox(elfPath: path, configuration: configuration).run() }
            try once()  // warm up: the shared /dev/kvm, the timer queue's threads
            let fds = ProcessResources.openFileDescriptors
            let maps = ProcessResources.mappings
            for _ in 0..<100 { try once() }
            // At most as many as before: descriptors other tests left to be closed later (a
            // Foundation pipe) may go meanwhile; a leak adds at least one per cycle.
            #expect(ProcessResources.openFileDescriptors <= fds)
            #expect(ProcessResources.mappings == maps)
        }
    }
}
