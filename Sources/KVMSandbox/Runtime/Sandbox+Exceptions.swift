
/// CPU exceptions: the report (registers, CR2, backtrace), the embedder's chance to resume, and
/// the two ways exceptions arrive (PVM's shutdown exit, hardware KVM's IDT stubs).
extension Sandbox {
    /// A CPU exception the hypervisor stopped on (PVM: no IDT): the run ends unless the
    /// program's signal handler or the embedder's exception handler resumes it.
    func handleException(vector: UInt8, errorCode: UInt32?) throws(KVMError) -> RunOutcome? {
        let registers = vcpu.registers
        if try unprotectParkedPage(vector: vector, errorCode: errorCode) { return nil }
        taintParkedVM()
        let fault = try makeFault(vector: vector, errorCode: errorCode, registers: registers)
        // An unmodified program's handler for the signal (SIGSEGV, SIGILL, ...) runs, as on Linux.
        if exceptionHandler == nil, try deliverFault(fault, interrupting: vcpu.registers) { return nil }
        guard var changed = resumedRegisters(after: fault) else { return .fault(fault) }
        changed.keepUserSettableFlags()
        vcpu.modifyRegisters { $0 = changed }
        return nil
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
            registers: registers, location: codeModules.containing(registers.instructionPointer).flatMap { $0.symbolize(registers.instructionPointer) },
            backtrace: backtrace(from: registers))
        fault.thread = linux.currentThread.tid
        fault.otherThreads = linux.state.threads.compactMap { thread in
            thread.registers.map { saved in
                var registers = saved
                if isAtSyscallReturn(registers.instructionPointer) { registers.instructionPointer = registers.userInstructionPointerInSystemCall }  // waiting in a system call
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
              changed.instructionPointer < X86PageTables.userAddressLimit, changed.stackPointer < X86PageTables.userAddressLimit else { return nil }
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
