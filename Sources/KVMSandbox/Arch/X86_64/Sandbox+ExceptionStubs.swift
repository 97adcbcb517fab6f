/// Hardware KVM's exception path: the IDT stubs (`ExceptionStubs`) report a vector through
/// their own port with the CPU's frame on the CPL 0 stack. Decoding and editing that frame is
/// x86's; what the exception then becomes (a signal, an embedder's resume, a report) is the
/// generic `Sandbox+Exceptions.swift`.
extension Sandbox {
    /// A CPU exception reported by an IDT stub (hardware KVM): the guest's registers are as they
    /// were, except RIP, RSP and RFLAGS, which are in the frame on the CPL 0 stack. Resuming
    /// edits that frame; the stub's `iretq` returns to it.
    func handleStubException() throws(KVMError) -> RunOutcome? {
        let current = vcpu.registers
        guard let vector = ExceptionStubs.vector(atStub: current.rip),
              let bytes = try? space.hostRead(current.rsp, count: Int(ExceptionStubs.Frame.size)) else {
            return .abiViolation("an exception report from outside the stubs (rip 0x\(String(current.rip, radix: 16)), rsp 0x\(String(current.rsp, radix: 16)))")
        }
        var frame = ExceptionStubs.Frame(words: stride(from: 0, to: bytes.count, by: 8).map { offset in
            UInt64(littleEndianBytes: bytes[offset..<offset + 8])
        })
        if vector == 13, frame.errorCode == 0, frame.fromUserMode,
           let instruction = try? guestMemory.read(frame.rip, count: 2) {
            if instruction.first == 0xe6 || instruction.first == 0xe4, instruction.last == UInt8(hostCallPort) {
                return try portAccessRefusedByTheCPU(instruction.first == 0xe6, frame: frame, current: current)
            }
            // The other forms on port 0x42 (through DX: in/out/ins/outs, with or without rep)
            // would exit on a CPU that honours the bitmap, and be refused there: same here.
            let opcode = instruction.first == 0xf3 ? instruction.last : instruction.first
            if let opcode, [0x6c, 0x6d, 0x6e, 0x6f, 0xec, 0xed, 0xee, 0xef].contains(opcode), current.rdx & 0xffff == UInt64(hostCallPort) {
                return .abiViolation("\(opcode & 0x02 != 0 ? "out" : "in") through DX to port 0x\(String(hostCallPort, radix: 16)) at rip 0x\(String(frame.rip, radix: 16)) (host calls use out %al, $0x42)")
            }
        }
        var registers = current
        (registers.rip, registers.rsp, registers.rflags) = (frame.rip, frame.rsp, frame.rflags)
        let errorCode = ExceptionStubs.pushesErrorCode(vector) ? UInt32(truncatingIfNeeded: frame.errorCode) : nil
        if frame.fromUserMode, try unprotectParkedPage(vector: vector, errorCode: errorCode) { return nil }
        taintParkedVM()
        let fault = try makeFault(vector: vector, errorCode: errorCode, registers: registers)
        if frame.fromUserMode, exceptionHandler == nil, try deliverFault(fault, interrupting: registers) { return nil }
        // An exception inside a stub or the syscall entry is never resumed.
        guard frame.fromUserMode, let changed = resumedRegisters(after: fault) else { return .fault(fault) }
        (frame.rip, frame.rsp) = (changed.rip, changed.rsp)
        frame.rflags = (changed.rflags & ExceptionStubs.userSettableFlags) | X86CPUState.rflags
        do {
            try space.hostWrite([UInt8](littleEndianWords: frame.words), at: current.rsp)
        } catch {
            return .abiViolation("the exception frame at 0x\(String(current.rsp, radix: 16)) is not writable")
        }
        vcpu.modifyRegisters { live in
            var updated = changed
            (updated.rip, updated.rsp, updated.rflags) = (live.rip, live.rsp, live.rflags)
            live = updated
        }
        return nil
    }

    /// `out %al, $0x42` or `in $0x42, %al` at CPL 3 raised #GP although the TSS I/O bitmap
    /// allows the port: some CPUs emulating SVM (QEMU's TCG) check the bitmap of a TSS other
    /// than the guest's. Leave the stub on the host side (back to user mode after the
    /// instruction) and handle the access as its VM exit would have been: a host call for
    /// `out`, an ABI violation for `in`. Costs an exception round trip, only there.
    func portAccessRefusedByTheCPU(_ isOut: Bool, frame: ExceptionStubs.Frame,
                                           current: GuestRegisters) throws(KVMError) -> RunOutcome? {
        var user = current
        (user.rip, user.rsp, user.rflags) = (frame.rip &+ 2, frame.rsp, frame.rflags)
        vcpu.modifyRegisters { $0 = user }
        try vcpu.setSpecialRegisters(X86CPUState.userMode(try vcpu.specialRegisters()))
        guard isOut else {
            return .abiViolation("in of 1 byte(s) to port 0x\(String(hostCallPort, radix: 16)) at rip 0x\(String(frame.rip, radix: 16)) (host calls use out %al, $0x42)")
        }
        return try serveHostCall(stop: currentStop)
    }
}
