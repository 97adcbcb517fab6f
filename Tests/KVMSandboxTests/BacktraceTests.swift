import Foundation
import KVMSandbox
import Testing

extension KVMTests {
    /// The unwinder and symbolizer on real guests built with and without `-g`, frame pointers
    /// and `.eh_frame`; hostile frame chains; exception handlers that resume the guest.
    @Suite struct Backtraces {
        struct Build: Sendable, CustomStringConvertible {
            let name: String
            let flags: [String]
            let hasLines: Bool
            /// How callers are found: CFI where `.eh_frame` exists, else the RBP chain.
            let callerMethods: Set<UnwindMethod>
            var description: String { name }
        }

        static let builds: [Build] = [
            .init(name: "-g, frame pointers, CFI", flags: ["-g", "-O1", "-fno-omit-frame-pointer"],
                  hasLines: true, callerMethods: [.callFrameInfo]),
            .init(name: "CFI only", flags: ["-O2", "-fomit-frame-pointer"],
                  hasLines: false, callerMethods: [.callFrameInfo]),
            .init(name: "-g, CFI only", flags: ["-g", "-O2", "-fomit-frame-pointer"],
                  hasLines: true, callerMethods: [.callFrameInfo]),
            .init(name: "frame pointers only", flags: ["-O1", "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables"],
                  hasLines: false, callerMethods: [.framePointer, .stackTop]),
        ]

        /// The 1-based line of the first source line containing `text`.
        static func line(of text: String) throws -> Int {
            let source = try String(contentsOf: Guests.testsDirectory.deletingLastPathComponent()
                .appendingPathComponent("Guests/backtrace.c"), encoding: .utf8)
            let lines = source.split(separator: "\n", omittingEmptySubsequences: false)
            return try #require(lines.firstIndex { $0.contains(text) }) + 1
        }

        @Test(arguments: builds)
        func nestedCallsUnwindToMain(_ build: Build) throws {
            let fault = try #require(try Guests.run("backtrace", ["nested"], flags: build.flags).outcome.fault)
            let frames = Array(fault.backtrace.frames.prefix(6))  // then musl's start-up code
            #expect(frames.map(\.function) == ["leaf", "middle", "middle", "middle", "middle", "main"], "\(fault.backtrace)")
            #expect(frames.first?.foundBy == .registers)
            #expect(Set(frames.dropFirst().map(\.foundBy)).isSubset(of: build.callerMethods), "\(frames)")
            #expect(fault.backtrace.end == "reached the C runtime's start-up code", "\(fault.backtrace.end)")
            if build.hasLines {
                #expect(fault.backtrace.lineInfoUnavailable == nil)
                #expect(frames.map { $0.source?.line } == [
                    try Self.line(of: "void leaf"), try Self.line(of: "if (n) middle"), try Self.line(of: "if (n) middle"),
                    try Self.line(of: "if (n) middle"), try Self.line(of: "if (n) middle"), try Self.line(of: "middle((int *)16"),
                ])
                #expect(frames.allSatisfy { $0.source?.file.hasSuffix("Guests/backtrace.c") == true })
            } else {
                #expect(frames.allSatisfy { $0.source == nil })
                #expect(fault.backtrace.lineInfoUnavailable?.contains("build with -g") == true)
            }
        }

        @Test func leafWithoutFramePointerOrCFIIsFoundFromTheStackTop() throws {
            // musl's memcpy is assembly: no frame, no CFI. Its caller comes from the word at RSP.
            let fault = try #require(try Guests.run("backtrace", ["memcpy"], flags: ["-O1"]).outcome.fault)
            #expect(fault.backtrace.frames.prefix(3).map(\.function) == ["memcpy", "copy", "main"], "\(fault.backtrace)")
            #expect(fault.backtrace.frames[1].foundBy == .stackTop)
        }

        @Test func deepRecursionStopsAtTheDepthLimit() throws {
            let fault = try #require(try Guests.run("backtrace", ["deep"], flags: ["-O1", "-fno-omit-frame-pointer"]).outcome.fault)
            #expect(fault.vector == 6)
            #expect(fault.backtrace.frames.count == 128)
            #expect(fault.backtrace.end == "stopped after 128 frames")
        }

        static let noCFI = ["-O1", "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables"]

        @Test func aFrameChainThatLoopsEndsTheWalk() throws {
            let fault = try #require(try Guests.run("backtrace", ["self-loop"], flags: Self.noCFI).outcome.fault)
            #expect(fault.backtrace.end == "the stack pointer did not move up (a frame loop)", "\(fault.backtrace)")
        }

        @Test func aFramePointerIntoASupervisorPageEndsTheWalk() throws {
            let fault = try #require(try Guests.run("backtrace", ["supervisor-rbp"], flags: Self.noCFI).outcome.fault)
            #expect(fault.backtrace.frames.map(\.function) == ["main"])
            #expect(fault.backtrace.end == "frame pointer 0x7ffffffff000 does not point into readable guest memory")
        }

        @Test func aNonCanonicalStackPointerEndsTheWalk() throws {
            let fault = try #require(try Guests.run("backtrace", ["wild-rsp"], flags: Self.noCFI).outcome.fault)
            #expect(fault.registers.rsp == 0xffff_8000_0000_0000)
            #expect(fault.backtrace.frames.count == 1)
            #expect(try Guests.run("args").outcome == .exited(status: 1))
        }

        @Test func anExceptionHandlerCanSkipABreakpoint() throws {
            var seen: [UInt8] = []
            let (outcome, stdout, _) = try Guests.run("backtrace", ["int3-resume"], setUp: { sandbox in
                let memory = sandbox.guestMemory
                sandbox.onException { fault, registers in
                    seen.append(fault.vector)
                    guard fault.vector == 3 else { return .stop }
                    // PVM reports RIP at the int3; hardware reports it after (a trap). Skip it either way.
                    if (try? memory.read(registers.rip, count: 1)) == [0xcc] { registers.rip += 1 }
                    return .resume
                }
            })
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "resumed after int3\n")
            #expect(seen == [3])
        }

        @Test func anExceptionHandlerCanEmulateAnInstruction() throws {
            let (outcome, stdout, _) = try Guests.run("backtrace", ["ud2-emulate"], setUp: { sandbox in
                let memory = sandbox.guestMemory
                sandbox.onException { fault, registers in
                    guard fault.vector == 6, (try? memory.read(registers.rip, count: 2)) == [0x0f, 0x0b] else { return .stop }
                    registers.rax = 1234
                    registers.rip += 2
                    return .resume
                }
            })
            #expect(outcome == .exited(status: 0))
            #expect(stdout == "ud2 gave 1234\n")
        }

        @Test func aHandlerThatStopsGivesTheFault() throws {
            let (outcome, _, _) = try Guests.run("backtrace", ["ud2-emulate"], setUp: { sandbox in
                sandbox.onException { _, _ in .stop }
            })
            #expect(outcome.fault?.vector == 6)
        }

        @Test func theReportEncodesAsJSON() throws {
            let fault = try #require(try Guests.run("backtrace", ["nested"], flags: ["-g", "-O1"]).outcome.fault)
            let data = try JSONEncoder().encode(RunReport(.fault(fault)))
            let decoded = try JSONDecoder().decode(RunReport.self, from: data)
            #expect(decoded.outcome == "fault")
            #expect(decoded.exitStatus == 139)
            #expect(decoded.fault?.mnemonic == "#PF")
            #expect(decoded.fault?.pageFaultCause == "write, page not present")
            #expect(decoded.fault?.backtrace == fault.backtrace)
        }
    }
}
