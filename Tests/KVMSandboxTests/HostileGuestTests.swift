import KVMSandbox
import Testing

extension KVMTests {
    /// Guests that misbehave: each ends in the exact fault, and the host carries on.
    @Suite struct HostileGuests {
        struct Expectation: Sendable, CustomStringConvertible {
            let mode: String
            let vector: UInt8
            var errorCode: UInt32? = nil
            var address: UInt64? = nil
            var description: String { mode }
        }

        static let cases: [Expectation] = [
            .init(mode: "null-write", vector: 14, errorCode: 0x6, address: 0),          // user write, not present
            .init(mode: "null-read", vector: 14, errorCode: 0x4, address: 8),           // user read, not present
            .init(mode: "wild-write", vector: 14, errorCode: 0x6, address: 0x3fff_ffff_0000),
            .init(mode: "code-write", vector: 14, errorCode: 0x7),                      // user write, protection
            .init(mode: "stack-exec", vector: 14, errorCode: 0x15),                     // user fetch, protection (NX)
            .init(mode: "data-exec", vector: 14, errorCode: 0x15),
            .init(mode: "stack-overflow", vector: 14, errorCode: 0x6),                  // into the guard page
            .init(mode: "read-gdt", vector: 14, errorCode: 0x5, address: GuestLayout.systemPage),  // supervisor page
            .init(mode: "write-stub", vector: 14, errorCode: 0x7, address: GuestLayout.syscallStubPage),
            .init(mode: "read-low-pages", vector: 14, errorCode: 0x4, address: 0x1000),   // nothing maps page tables
            .init(mode: "host-address", vector: 14, errorCode: 0x4, address: 0x7f00_0000_0000),
            .init(mode: "wild-jump", vector: 14, errorCode: 0x14, address: 0xdead_beef_000),  // user fetch, not present
            .init(mode: "hlt", vector: 13, errorCode: 0),
            .init(mode: "sti", vector: 13, errorCode: 0),
            .init(mode: "mov-cr0", vector: 13, errorCode: 0),
            .init(mode: "misaligned-sse", vector: 13, errorCode: 0),
            .init(mode: "kernel-address", vector: 14, errorCode: 0x4, address: 0xffff_ffff_8100_0000),
            .init(mode: "non-canonical", vector: 13, errorCode: 0),
            .init(mode: "cli", vector: 13, errorCode: 0),
            .init(mode: "mov-cr3", vector: 13, errorCode: 0),
            .init(mode: "write-cr3", vector: 13, errorCode: 0),
            .init(mode: "lgdt", vector: 13, errorCode: 0),
            .init(mode: "lidt", vector: 13, errorCode: 0),
            .init(mode: "wrmsr", vector: 13, errorCode: 0),
            .init(mode: "rdmsr", vector: 13, errorCode: 0),
            .init(mode: "out-other-port", vector: 13, errorCode: 0),
            // No IDT: PVM reports a software interrupt as #UD; hardware would raise #GP(0x402).
            .init(mode: "int80", vector: KVMPlatform.detect() == .pvm ? 6 : 13),
            .init(mode: "ud2", vector: 6),
            .init(mode: "int3", vector: 3),
            .init(mode: "divide", vector: 0),
        ]

        @Test(arguments: cases)
        func faultIsReportedExactly(_ expected: Expectation) throws {
            let (outcome, stdout, _) = try Guests.run("attacks", [expected.mode])
            guard let fault = outcome.fault else {
                Issue.record("\(expected.mode): expected \(X86Exception.mnemonic(expected.vector)), got \(outcome); stdout \(stdout)")
                return
            }
            #expect(fault.vector == expected.vector, "\(expected.mode): \(fault)")
            if let code = expected.errorCode { #expect(fault.errorCode == code, "\(expected.mode): \(fault)") }
            if let address = expected.address { #expect(fault.faultAddress == address, "\(expected.mode): \(fault)") }
            #expect(outcome.exitStatus == 128 + X86Exception.signal(expected.vector))
            if !["stack-overflow", "stack-exec", "data-exec", "wild-jump"].contains(expected.mode) {  // RIP is not in code there
                #expect(fault.location?.hasPrefix("main") == true, "\(expected.mode): \(fault)")
            }
            // The host is unharmed: a normal guest still runs.
            #expect(try Guests.run("args").outcome == .exited(status: 1))
        }

        @Test func inFromAPortIsAnABIViolation() throws {
            let (outcome, _, _) = try Guests.run("attacks", ["in-port"])
            guard case .abiViolation(let message) = outcome else {
                Issue.record("expected an ABI violation, got \(outcome)")
                return
            }
            #expect(message.hasPrefix("in of 1 byte(s) to port 0x42"))
            #expect(outcome.exitStatus == ExitStatus.abiViolation)
        }

        @Test func syscallWithANonsenseNumberReturnsENOSYS() throws {
            let (outcome, stdout, _) = try Guests.run("attacks", ["syscall-nonsense"])
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "syscall=-38\n")
        }

        @Test func abortIsReportedAsSIGABRT() throws {
            let (outcome, _, _) = try Guests.run("attacks", ["abort"])
            #expect(outcome == .signaled(signal: 6))
            #expect(outcome.exitStatus == 134)
        }
    }
}
