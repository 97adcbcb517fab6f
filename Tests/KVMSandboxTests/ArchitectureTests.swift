import Testing
@testable import KVMSandbox

/// The x86-64 pieces generic code reaches through neutral names: the signal frame round trip
/// (what delivery writes, `rt_sigreturn` reads back), the calling conventions, the DWARF
/// register state. Pure values, no VM.
@Suite struct ArchitectureTests {
    /// Registers with every word distinct, so a swapped slot shows.
    static var sample: GuestRegisters {
        var registers = GuestRegisters()
        (registers.rax, registers.rbx, registers.rcx, registers.rdx) = (1, 2, 0x40_1002, 4)
        (registers.rsi, registers.rdi, registers.rbp, registers.rsp) = (5, 6, 7, 0x7fff_f000)
        (registers.r8, registers.r9, registers.r10, registers.r11) = (9, 10, 11, 0x246)
        (registers.r12, registers.r13, registers.r14, registers.r15) = (13, 14, 15, 16)
        (registers.rip, registers.rflags) = (0x40_2000, 0x86)  // PF, SF and the reserved bit: all user flags
        return registers
    }

    @Test func aSignalFrameRestoresWhatItSaved() throws {
        let action = SignalAction(bytes: 0x40_3000.littleEndianBytes + (SignalAction.restorerFlag).littleEndianBytes
                                  + UInt64(0x40_4000).littleEndianBytes + UInt64(0).littleEndianBytes)
        let registers = Self.sample
        let xsave = [UInt8](repeating: 0xab, count: 576)
        let frame = try #require(X86SignalFrame(signal: 10, interrupting: registers, details: .sentByThread, action: action,
                                                alternateStack: SignalStack(), restoredMask: 0x1234, xsave: xsave,
                                                userAddressLimit: X86PageTables.userAddressLimit))
        // Below the red zone, 16-byte aligned after the return address, the XSAVE area 64-byte aligned above it.
        #expect(frame.address < registers.rsp - X86SignalFrame.redZone)
        #expect((frame.address + 8) % 16 == 0)
        #expect(frame.floatingPointAddress % 64 == 0 && frame.floatingPointAddress > frame.address)
        #expect(frame.floatingPointBytes.count == xsave.count + 4)
        #expect(frame.bytes.count == Int(X86SignalFrame.size))
        #expect(UInt64(littleEndianBytes: frame.bytes[0..<8]) == 0x40_4000)  // returns to the restorer

        // The handler: (signo, &info, &uc) and its own stack pointer, at the action's address.
        let handler = frame.handlerRegisters
        #expect(handler.instructionPointer == 0x40_3000 && handler.stackPointer == frame.address)
        #expect(handler.rdi == 10 && handler.rdx == frame.address + 8 && handler.rsi == frame.address + 8 + X86SignalFrame.contextSize)

        // rt_sigreturn: the restorer popped the return address, so RSP is the ucontext.
        var returning = handler
        returning.stackPointer = frame.address + 8
        #expect(X86SignalFrame.contextAddress(returning: returning) == frame.address + 8)
        #expect(X86SignalFrame.frameAddress(ofContext: frame.address + 8) == frame.address)
        let context = Array(frame.bytes[8..<8 + Int(X86SignalFrame.contextSize)])
        let (restored, mask) = try #require(X86SignalFrame.restore(context: context, over: handler))
        #expect(restored == registers)
        #expect(mask == 0x1234)
        #expect(X86SignalFrame.restore(context: Array(context.prefix(100)), over: handler) == nil)
    }

    @Test func aFrameThatDoesNotFitIsRefused() {
        let action = SignalAction(bytes: [UInt8](repeating: 0, count: 32))
        var registers = Self.sample
        registers.stackPointer = 0x100  // the frame would wrap below zero
        #expect(X86SignalFrame(signal: 11, interrupting: registers, details: .sentByThread, action: action,
                               alternateStack: SignalStack(), restoredMask: 0, xsave: [],
                               userAddressLimit: X86PageTables.userAddressLimit) == nil)
    }

    @Test func systemCallsAndFunctionCallsUseTheirConventions() {
        var registers = Self.sample
        registers.setCall(number: 257, arguments: [1, 2, 3, 4, 5, 6])
        #expect(registers.callNumber == 257 && registers.callArguments == [1, 2, 3, 4, 5, 6])
        registers.callResult = UInt64(bitPattern: -2)
        #expect(registers.rax == UInt64(bitPattern: -2))

        // Back from `syscall`: RIP from RCX, user flags from R11; restarting: on the instruction.
        let sample = Self.sample
        #expect(sample.returningFromSystemCall.instructionPointer == 0x40_1002)
        #expect(sample.returningFromSystemCall.rflags == 0x46)  // IF (0x200) is never the guest's to set
        #expect(sample.restartingSystemCall.instructionPointer == 0x40_1000)
        #expect(sample.systemCallAddress == 0x40_1000)

        var call = Self.sample
        call.prepareFunctionCall(entry: 0x40_5000, stack: 0x7fff_e000, arguments: [7, 8, 9])
        #expect(call.instructionPointer == 0x40_5000 && call.stackPointer == 0x7fff_e000 && call.callResult == 0)
        #expect((call.rdi, call.rsi, call.rdx, call.rcx) == (7, 8, 9, sample.rcx))
    }

    @Test func theDwarfStateRoundTrips() {
        let registers = Self.sample
        let state = DwarfRegister.state(of: registers)
        #expect(state[DwarfRegister.returnAddress] == registers.instructionPointer)
        #expect(state[DwarfRegister.stackPointer] == registers.stackPointer)
        #expect(Set(DwarfRegister.tracked).isSubset(of: Set(state.keys)))
        let back = DwarfRegister.registers(from: state)
        #expect(DwarfRegister.state(of: back) == state)
    }
}
