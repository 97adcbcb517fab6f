import CKVM

/// The checks of a parked VM between requests: the paranoid comparison with the snapshot, and
/// whether a stopped vCPU can be judged at all.
extension ParkedSandbox {
    /// The paranoid check of a parked VM between requests: stops the vCPU, compares every guest
    /// page and the vCPU state with the snapshot, and lets the VM run again. What differs
    /// (empty: the next request cannot tell this VM from a fresh fork). The general-purpose
    /// registers and the x87/SSE state are not compared: the idle stub sets them all before
    /// every request (the x87/SSE image it loads lies in a compared, read-only page); RIP must
    /// be in the idle loop. `SandboxConfiguration.verifyResets` runs it after every fast reset.
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
        if !ParkingStub.idleRange.contains(registers.rip), !monitor.tainted.load(ordering: .sequentiallyConsistent) {
            result.append("the vCPU is not in the idle loop (rip 0x\(String(registers.rip, radix: 16)))")
        }
        let memory = sandbox.memory, mailboxPage = sandbox.mailboxPhysical >> PageSize.shift
        for page in memory.pagesDifferingFromSource() {
            // The mailbox's polling word belongs to the host's poller, not to the guest.
            if page == mailboxPage, memory.differsFromSource(page: page, ignoring: 128..<136) == false { continue }
            result.append("guest page 0x\(String(page << PageSize.shift, radix: 16))")
        }
        do {
            var now = try sandbox.vcpu.saveState(capabilities: sandbox.system.stateCapabilities)
            now.registers = snapshot.vcpuState.registers
            now.floatingPoint = snapshot.vcpuState.floatingPoint
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
        let events = sandbox.vcpu.events
        return events.exception.injected != 0 || events.exception.pending != 0
            || sandbox.isInSyscallEntry(sandbox.vcpu.registers.rip)
    }
}
