
/// The checks of a parked VM between requests: the paranoid comparison with the snapshot, and
/// whether a stopped vCPU can be judged at all.
extension ParkedSandbox {
    /// The paranoid check of a parked VM between requests: stops the vCPU, compares every guest
    /// page and the vCPU state with the snapshot, and lets the VM run again. What differs
    /// (empty: the next request cannot tell this VM from a fresh fork). The general-purpose
    /// registers and the x87/SSE state are not compared: the idle stub sets them all before
    /// every request (the x87/SSE image it loads lies in a compared, read-only page); RIP must
    /// be in the idle loop. Nor are CR2 and a delivered exception's record, nor hardware KVM's
    /// CPL 0 stacks (see below). `SandboxConfiguration.verifyResets` runs it after every fast reset.
    public func differencesFromSnapshot() throws(SandboxError) -> [String] {
        try state.withLock { counters throws(SandboxError) -> [String] in
            if let broken = counters.broken { throw broken }
            _ = stopVCPU()
            // Stopped on its way to an exit (in a CPL 0 stub): let it get there, then look.
            for _ in 0..<100 where stoppedInHostStub && !stoppedByGuest {
                resumeVCPU(clearingTaint: false)
                _ = stopVCPU()
            }
            let differences = try checkedDifferences()
            resumeVCPU(clearingTaint: false)
            return differences
        }
    }

    /// `differencesFromSnapshot` with the vCPU stopped.
    func checkedDifferences() throws(SandboxError) -> [String] {
        var result: [String] = []
        let registers = sandbox.vcpu.registers
        if !ParkingStub.idleRange.contains(registers.instructionPointer), !monitor.tainted.load(ordering: .sequentiallyConsistent) {
            result.append("the vCPU is not in the idle loop (rip 0x\(String(registers.instructionPointer, radix: 16)))")
        }
        let memory = sandbox.memory
        // Words that may differ: the mailbox's polling word (the host's poller owns it), the
        // vDSO's clock parameters, and the W and D bits of the page-table entries of pages kept writable.
        let pollingWord = sandbox.mailboxPhysical + 128
        let keptSlots = Set(monitor.keptPages.withLock { pages in
            pages.compactMap { sandbox.space.tables.leafSlot($0.virtual, memory: memory) }
        })
        let writeBits = X86PageTables.writable | X86PageTables.dirty
        // Hardware KVM's CPL 0 stacks: the CPU writes an exception's frame there (the idle
        // stub's sleep, under QEMU's TCG) and only the host's stubs read them.
        let cpl0Stacks: Set<UInt64> = !sandbox.usesExceptionStubs ? [] : Set(
            [ExceptionStubs.kernelStackPage, ExceptionStubs.criticalStackPage].compactMap {
                sandbox.space.tables.translateForHost($0, memory: memory).map { $0 >> PageSize.shift }
            })
        // The vDSO's clock parameters: the host writes them at each entry (the guest cannot
        // write that page: mprotect refuses it), so a parked VM keeps its own vCPU's.
        let clockWords: Set<UInt64> = sandbox.clockPage.map { page in
            Set(stride(from: page.physical, to: page.physical + VDSO.DataLayout.multiplier + 8, by: 8))
        } ?? []
        for page in memory.pagesDifferingFromSource() where !cpl0Stacks.contains(page) {
            let allowed = memory.wordsDifferingFromSource(page: page).allSatisfy { word in
                word.address == pollingWord || clockWords.contains(word.address)
                    || (keptSlots.contains(word.address) && word.now ^ word.source == writeBits)
            }
            if allowed { continue }
            let words = memory.wordsDifferingFromSource(page: page).prefix(4)
                .map { "+0x\(String($0.address & (PageSize.bytes - 1), radix: 16))" }.joined(separator: " ")
            result.append("guest page 0x\(String(page << PageSize.shift, radix: 16)) (words \(words))")
        }
        do {
            var now = try sandbox.vcpu.saveState(capabilities: sandbox.system.stateCapabilities)
            now.registers = snapshot.vcpuState.registers
            now.floatingPoint = snapshot.vcpuState.floatingPoint
            // CR2 and the record of an exception already delivered (a resolved write fault):
            // CPL 3 cannot read them, and the next fault overwrites them.
            now.specialRegisters.cr2 = snapshot.vcpuState.specialRegisters.cr2
            if now.events.exception.injected == 0, now.events.exception.pending == 0 {
                now.events.exception = snapshot.vcpuState.events.exception
                now.events.exception_has_payload = snapshot.vcpuState.events.exception_has_payload
                now.events.exception_payload = snapshot.vcpuState.events.exception_payload
            }
            result += differences(between: snapshot.vcpuState, and: now).map { "vCPU: \($0)" }
        } catch {
            throw .kvm(error)
        }
        return result
    }

    /// Whether the vCPU thread stopped with an outcome of the guest's (a fault, an exit), not on request.
    var stoppedByGuest: Bool {
        control.withLock {
            guard let stoppedOutcome else { return false }
            if case .ready = stoppedOutcome { return false }
            return true
        }
    }

    /// Whether the stopped vCPU is between a guest event and the exit that reports it: with an
    /// exception being delivered, or in the host's CPL 0 stubs (hardware KVM's exception and
    /// `syscall` entry stubs). (Under an emulated SVM, the idle stub's `out` arrives this way
    /// too: QEMU's TCG raises #GP for it.)
    var stoppedInHostStub: Bool {
        sandbox.vcpu.hasExceptionInFlight || sandbox.isInSyscallEntry(sandbox.vcpu.registers.instructionPointer)
    }
}
