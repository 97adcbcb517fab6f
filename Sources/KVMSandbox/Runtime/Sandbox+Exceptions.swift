
/// CPU exceptions: the report (registers, CR2, backtrace), the embedder's chance to resume, and
/// the two ways exceptions arrive (PVM's shutdown exit, hardware KVM's IDT stubs).
extension Sandbox {
    /// A CPU exception (PVM: `KVM_EXIT_SHUTDOWN`, the vector in the synced events): the run ends
    /// unless the embedder's exception handler resumes it.
    func handleException() throws(KVMError) -> RunOutcome? {
        let events = vcpu.events
        let vector = events.exception.nr
        let registers = vcpu.registers
        let errorCode = events.exception.has_error_code != 0 || X86Exception.hasErrorCode(vector)
            ? events.exception.error_code : nil
        if try unprotectParkedPage(vector: vector, errorCode: errorCode) { return nil }
        taintParkedVM()
        let fault = try makeFault(vector: vector, errorCode: errorCode, registers: registers)
        // An unmodified program's handler for the signal (SIGSEGV, SIGILL, ...) runs, as on Linux.
        if exceptionHandler == nil, try deliverFault(fault, interrupting: vcpu.registers) { return nil }
        guard var changed = resumedRegisters(after: fault) else { return .fault(fault) }
        changed.rflags = (changed.rflags & ExceptionStubs.userSettableFlags) | 0x2
        vcpu.modifyRegisters { $0 = changed }
        return nil
    }

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
        frame.rflags = (changed.rflags & ExceptionStubs.userSettableFlags) | 0x2
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

    /// Whether `rip` is in the CPL 0 stub page (exception stubs and the `syscall` entry).
    func isInSyscallEntry(_ rip: UInt64) -> Bool {
        usesExceptionStubs && (GuestLayout.page(ExceptionStubs.stubPage, contains: rip)
                               || GuestLayout.page(GuestLayout.kernelSyscallPage, contains: rip))
    }

    /// The report of an exception, with its backtrace.
    func makeFault(vector: UInt8, errorCode: UInt32?, registers: GuestRegisters) throws(KVMError) -> GuestFault {
        var fault = GuestFault(
            vector: vector, errorCode: errorCode,
            faultAddress: vector == 14 ? try vcpu.specialRegisters().cr2 : nil,
            registers: registers, location: codeModules.containing(registers.rip).flatMap { $0.symbolize(registers.rip) },
            backtrace: backtrace(from: registers))
        fault.thread = linux.currentThread.tid
        fault.otherThreads = linux.state.threads.compactMap { thread in
            thread.registers.map { saved in
                var registers = saved
                if isAtSyscallReturn(registers.rip) { registers.rip = registers.rcx }  // waiting in a system call
                return ThreadBacktrace(thread: thread.tid, backtrace: backtrace(from: registers))
            }
        }
        logger.debug("guest fault: \(fault)")
        return fault
    }

    /// The registers to resume with, when the embedder's exception handler chooses to resume
    /// with a user-mode RIP and RSP; nil to end the run.
    func resumedRegisters(after fault: GuestFault) -> GuestRegisters? {
        guard let exceptionHandler else { return nil }
        var changed = fault.registers
        // The embedder's handler may touch guest memory: never alongside a poller-served call.
        let decision = if let exitless { exitless.exclusively { exceptionHandler(fault, &changed) } }
                       else { exceptionHandler(fault, &changed) }
        guard decision == .resume,
              changed.rip < X86PageTables.userAddressLimit, changed.rsp < X86PageTables.userAddressLimit else { return nil }
        return changed
    }

    /// The program, its loader and the libraries mapped so far, for backtraces.
    var codeModules: [CodeModule] {
        [CodeModule(program, name: nil)] + (interpreter.map { [CodeModule($0, name: $0.path.map(FileSystemView.lastComponent))] } ?? [])
            + CodeModule.libraries(from: linux.state.fileMappings, fileSystem: linux.fileSystem)
    }

    /// The guest's call stack, symbolized from its ELF (frame pointers and `.eh_frame`, DWARF lines).
    func backtrace(from registers: GuestRegisters) -> Backtrace {
        let view = guestMemory
        let unwinder = Unwinder(modules: codeModules) { address in
            try? view.load(UInt64.self, at: address)
        }
        return unwinder.backtrace(from: registers)
    }
}
