import CHost
import Atomics
import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Why `KVM_RUN` returned, decoded from `kvm_run`.
enum VCPUExit: Equatable {
    /// `in`/`out`: port, direction, access size, repeat count.
    case io(port: UInt16, isOut: Bool, size: Int, count: Int)
    /// An access to guest-physical memory with no memslot.
    case mmio(address: UInt64, isWrite: Bool, length: Int)
    /// `KVM_EXIT_SHUTDOWN`: on PVM, any CPU exception when there is no IDT.
    case shutdown
    /// `KVM_EXIT_INTERNAL_ERROR` with its suberror (hardware KVM: an exception with no IDT).
    case internalError(suberror: UInt32)
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware's reason.
    case failEntry(reason: UInt64)
    /// `KVM_EXIT_DIRTY_RING_FULL`: harvest the dirty ring, reset it, and run on.
    case dirtyRingFull
    /// `KVM_RUN` returned `EINTR` (a signal or `immediate_exit`).
    case interrupted
    /// `KVM_EXIT_HLT` and anything else: the raw exit reason.
    case other(reason: UInt32)

    /// The `KVM_EXIT_*` name of a raw exit reason, for error messages.
    static func name(of reason: UInt32) -> String {
        let names: [UInt32: String] = [
            0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO", 3: "KVM_EXIT_HYPERCALL",
            4: "KVM_EXIT_DEBUG", 5: "KVM_EXIT_HLT", 6: "KVM_EXIT_MMIO", 7: "KVM_EXIT_IRQ_WINDOW_OPEN",
            8: "KVM_EXIT_SHUTDOWN", 9: "KVM_EXIT_FAIL_ENTRY", 10: "KVM_EXIT_INTR", 11: "KVM_EXIT_SET_TPR",
            12: "KVM_EXIT_TPR_ACCESS", 17: "KVM_EXIT_INTERNAL_ERROR", 24: "KVM_EXIT_SYSTEM_EVENT",
        ]
        return names[reason] ?? "exit reason \(reason)"
    }
}

/// A vCPU file descriptor and its mapped `kvm_run` page. Unmapped and closed on deinit.
///
/// Registers travel through the sync-regs area of `kvm_run` (`KVM_CAP_SYNC_REGS`), so a
/// round trip costs one `KVM_RUN` and no `KVM_GET_REGS`/`KVM_SET_REGS`.
final class VirtualCPU {
    let fd: FileDescriptor
    private let runPage: UnsafeMutablePointer<kvm_run>
    private let mmapSize: Int

    /// The vCPU's dirty ring, when the VM has one.
    let dirtyRing: DirtyRing?

    init(fd: FileDescriptor, mmapSize: Int, dirtyRingEntries: Int? = nil) throws(KVMError) {
        dirtyRing = try dirtyRingEntries.map { (entries) throws(KVMError) in try DirtyRing(vcpu: fd, entries: entries) }
        guard let mapping = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0),
              mapping != MAP_FAILED else {
            throw KVMError("mmap(kvm_run)", .current)
        }
        self.fd = fd
        self.mmapSize = mmapSize
        self.runPage = mapping.bindMemory(to: kvm_run.self, capacity: 1)
        runPage.pointee.kvm_valid_regs = UInt64(KVM_SYNC_X86_REGS | KVM_SYNC_X86_EVENTS)
    }

    deinit {
        munmap(runPage, mmapSize)
        try? fd.close()
    }

    /// Enters the guest until the next exit.
    func run() throws(KVMError) -> VCPUExit {
        if ckvmIoctl(fd.rawValue, KVMRequest.run, 0) < 0 {
            let error = Errno.current
            if error == .interrupted { return .interrupted }
            throw KVMError("KVM_RUN", error)
        }
        // Read single fields through the pointer: copying all of kvm_run (2 KiB+) per exit shows up.
        let r = runPage
        switch r.pointee.exit_reason {
        case UInt32(KVM_EXIT_IO):
            return .io(port: r.pointee.io.port, isOut: r.pointee.io.direction == UInt8(KVM_EXIT_IO_OUT),
                       size: Int(r.pointee.io.size), count: Int(r.pointee.io.count))
        case UInt32(KVM_EXIT_MMIO):
            return .mmio(address: r.pointee.mmio.phys_addr, isWrite: r.pointee.mmio.is_write != 0, length: Int(r.pointee.mmio.len))
        case UInt32(KVM_EXIT_SHUTDOWN):
            return .shutdown
        case UInt32(KVM_EXIT_INTERNAL_ERROR):
            return .internalError(suberror: r.pointee.internal.suberror)
        case UInt32(KVM_EXIT_DIRTY_RING_FULL):
            return .dirtyRingFull
        case UInt32(KVM_EXIT_FAIL_ENTRY):
            return .failEntry(reason: r.pointee.fail_entry.hardware_entry_failure_reason)
        default:
            return .other(reason: r.pointee.exit_reason)
        }
    }

    /// Enters the guest until the next exit and says what it means (`GuestEvent`): the one
    /// place KVM's exits are interpreted. `doorbell` is the guest-physical address of the
    /// MMIO doorbell (the end of guest memory).
    func nextEvent(doorbell: UInt64) throws(KVMError) -> GuestEvent {
        switch try run() {
        case .io(port: hostCallPort, isOut: true, size: 1, count: 1): return .hostCallTrap
        case .io(port: ExceptionStubs.reportPort, isOut: true, size: 1, count: 1): return .exceptionReport
        case .io(let port, let isOut, let size, _): return .portAccess(port: port, isOut: isOut, size: size)
        case .mmio(address: doorbell, isWrite: true, length: _): return .doorbell
        case .mmio(let address, let isWrite, let length): return .unbackedMemory(address: address, isWrite: isWrite, length: length)
        case .shutdown:
            // PVM without an IDT: the exception is in the synced events.
            let exception = events.exception
            let hasCode = exception.has_error_code != 0 || X86Exception.hasErrorCode(exception.nr)
            return .exception(vector: exception.nr, errorCode: hasCode ? exception.error_code : nil)
        case .internalError(let suberror): return .exceptionLost(detail: "KVM_EXIT_INTERNAL_ERROR (suberror \(suberror))")
        case .failEntry(let reason): return .entryFailed(detail: "KVM_EXIT_FAIL_ENTRY (hardware reason 0x\(String(reason, radix: 16)))")
        case .dirtyRingFull: return .dirtyLogFull
        case .interrupted: return .interrupted
        case .other(let reason): return .unexpected(name: VCPUExit.name(of: reason))
        }
    }

    /// Whether a CPU exception is being delivered (injected or pending) as of the last exit.
    var hasExceptionInFlight: Bool {
        let exception = runPage.pointee.s.regs.events.exception
        return exception.injected != 0 || exception.pending != 0
    }

    /// The general-purpose registers as of the last exit (from the sync-regs area).
    var registers: GuestRegisters { GuestRegisters(runPage.pointee.s.regs.regs) }

    /// Changes the registers; they reach the vCPU on the next `KVM_RUN`.
    func modifyRegisters(_ body: (inout GuestRegisters) -> Void) {
        var registers = GuestRegisters(runPage.pointee.s.regs.regs)
        body(&registers)
        runPage.pointee.s.regs.regs = registers.kvmRegisters
        runPage.pointee.kvm_dirty_regs |= UInt64(KVM_SYNC_X86_REGS)
    }

    /// Exception and interrupt state as of the last exit (from the sync-regs area).
    var events: kvm_vcpu_events { runPage.pointee.s.regs.events }

    /// Replaces the exception and interrupt state; it reaches the vCPU on the next `KVM_RUN`.
    func setEvents(_ events: kvm_vcpu_events) {
        runPage.pointee.s.regs.events = events
        runPage.pointee.kvm_dirty_regs |= UInt64(KVM_SYNC_X86_EVENTS)
    }

    /// Sets all general-purpose registers now (`KVM_SET_REGS`); used once at start-up.
    func setRegisters(_ registers: GuestRegisters) throws(KVMError) {
        var value = registers.kvmRegisters
        try kvmIoctl(fd, KVMRequest.setRegs, &value, "KVM_SET_REGS")
        runPage.pointee.kvm_dirty_regs &= ~UInt64(KVM_SYNC_X86_REGS)
    }

    /// `KVM_GET_SREGS`: control registers, segments, descriptor tables.
    func specialRegisters() throws(KVMError) -> kvm_sregs {
        var sregs = kvm_sregs()
        try kvmIoctl(fd, KVMRequest.getSRegs, &sregs, "KVM_GET_SREGS")
        return sregs
    }

    /// `KVM_SET_SREGS`.
    func setSpecialRegisters(_ sregs: kvm_sregs) throws(KVMError) {
        var value = sregs
        try kvmIoctl(fd, KVMRequest.setSRegs, &value, "KVM_SET_SREGS")
    }

    /// `KVM_GET_VCPU_EVENTS`.
    func vcpuEvents() throws(KVMError) -> kvm_vcpu_events {
        var events = kvm_vcpu_events()
        try kvmIoctl(fd, KVMRequest.getVCPUEvents, &events, "KVM_GET_VCPU_EVENTS")
        return events
    }

    /// The guest's TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    func tscKilohertz() throws(KVMError) -> UInt64 {
        UInt64(try kvmIoctl(fd, KVMRequest.getTSCKHz, 0, "KVM_GET_TSC_KHZ"))
    }

    /// Reads one model-specific register (`KVM_GET_MSRS`).
    func msr(_ index: UInt32) throws(KVMError) -> UInt64 {
        var list = ckvm_msr_list()
        list.nmsrs = 1
        withUnsafeMutableBytes(of: &list.entries) { raw in
            raw.bindMemory(to: kvm_msr_entry.self)[0] = kvm_msr_entry(index: index, reserved: 0, data: 0)
        }
        let read = try kvmIoctl(fd, KVMRequest.getMSRs, &list, "KVM_GET_MSRS")
        guard read == 1 else { throw KVMError("KVM_GET_MSRS (MSR 0x\(String(index, radix: 16)) not read)", .invalidArgument) }
        return withUnsafeBytes(of: &list.entries) { $0.bindMemory(to: kvm_msr_entry.self)[0].data }
    }

    /// Writes model-specific registers (`KVM_SET_MSRS`), at most 8 at a time.
    func setMSRs(_ values: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        precondition(values.count <= 8)
        var list = ckvm_msr_list()
        list.nmsrs = UInt32(values.count)
        withUnsafeMutableBytes(of: &list.entries) { raw in
            let entries = raw.bindMemory(to: kvm_msr_entry.self)
            for (slot, msr) in values.enumerated() {
                entries[slot] = kvm_msr_entry(index: msr.index, reserved: 0, data: msr.value)
            }
        }
        let written = try kvmIoctl(fd, KVMRequest.setMSRs, &list, "KVM_SET_MSRS")
        guard written == values.count else { throw KVMError("KVM_SET_MSRS (only \(written) of \(values.count) set)", .invalidArgument) }
    }

    /// `KVM_SET_CPUID2`: what the guest's CPUID instruction answers (hardware KVM; under PVM
    /// the guest sees the host's CPUID).
    func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        var table = chost_cpuid()
        table.nent = UInt32(min(entries.count, 256))
        withUnsafeMutableBytes(of: &table.entries) { raw in
            let slots = raw.bindMemory(to: kvm_cpuid_entry2.self)
            for (index, entry) in entries.prefix(256).enumerated() { slots[index] = entry }
        }
        try kvmIoctl(fd, KVMRequest.setCPUID2, &table, "KVM_SET_CPUID2")
    }

    /// `KVM_SET_XCRS` with XCR0 alone: which state components XSAVE covers (x87, SSE, AVX...).
    func setXCR0(_ value: UInt64) throws(KVMError) {
        var xcrs = kvm_xcrs()
        xcrs.nr_xcrs = 1
        xcrs.xcrs.0 = kvm_xcr(xcr: 0, reserved: 0, value: value)
        try kvmIoctl(fd, KVMRequest.setXCRs, &xcrs, "KVM_SET_XCRS")
    }

    /// Clears `immediate_exit` after an interruption so the next `KVM_RUN` enters the guest.
    func clearImmediateExit() {
        interrupter.immediateExit.store(0, ordering: .relaxed)
    }

    /// A handle another thread can use to stop this vCPU's current or next `KVM_RUN`.
    var interrupter: VCPUInterrupter {
        VCPUInterrupter(immediateExit: UnsafeAtomic<UInt8>(
            at: UnsafeMutableRawPointer(runPage.pointer(to: \kvm_run.immediate_exit)!)
                .assumingMemoryBound(to: UInt8.AtomicRepresentation.self)))
    }
}

/// Stops a vCPU from another thread: sets `immediate_exit` (so a `KVM_RUN` about to start returns
/// at once) and signals the vCPU's thread (so one in progress returns `EINTR`).
///
/// Valid only while the `VirtualCPU` it came from is alive; the watchdog disarms it before then.
///
/// (@unchecked: `immediateExit` is an atomic over the vCPU's `kvm_run` page, which the `VirtualCPU` keeps mapped while an interrupter can be used.)
struct VCPUInterrupter: @unchecked Sendable {
    let immediateExit: UnsafeAtomic<UInt8>

    /// Whether a kick is pending (set by `interrupt`, cleared when the run loop resumes the guest).
    var isInterrupted: Bool { immediateExit.load(ordering: .relaxed) != 0 }

    /// Kicks `thread` out of `KVM_RUN`.
    func interrupt(thread: pthread_t) {
        immediateExit.store(1, ordering: .sequentiallyConsistent)
        pthread_kill(thread, VCPUInterrupter.signal)
    }

    /// Unblocks the kick signal on the calling thread (thread pools such as libdispatch's block all
    /// signals in their workers) and returns the previous mask for `restoreSignalMask`.
    static func unblockSignalOnThisThread() -> sigset_t {
        var kick = sigset_t(), previous = sigset_t()
        sigemptyset(&kick)
        sigaddset(&kick, signal)
        pthread_sigmask(SIG_UNBLOCK, &kick, &previous)
        return previous
    }

    /// Puts back the mask `unblockSignalOnThisThread` replaced.
    static func restoreSignalMask(_ mask: sigset_t) {
        var mask = mask
        pthread_sigmask(SIG_SETMASK, &mask, nil)
    }

    /// The signal used to kick vCPU threads (a real-time signal with an empty handler, no SA_RESTART).
    static let signal: Int32 = {
        let number = __libc_current_sigrtmin() + 3
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        sigaction(number, &action, nil)
        return number
    }()
}

extension VirtualCPU {
    /// The whole vCPU state (`VCPUState`). Registers and events come from the sync-regs area,
    /// i.e. as they will be at the next `KVM_RUN` (including changes not yet applied).
    func saveState(capabilities: VCPUStateCapabilities) throws(KVMError) -> VCPUState {
        VCPUState(
            registers: runPage.pointee.s.regs.regs, specialRegisters: try specialRegisters(), events: events,
            floatingPoint: try floatingPointState(capabilities),
            extendedControlRegisters: capabilities.xcrs ? try getXCRs() : nil,
            debugRegisters: capabilities.debugRegisters ? try getDebugRegisters() : nil,
            msrs: try getMSRs(VCPUState.savedMSRs))
    }

    /// Puts the whole state back (a fork, from its snapshot).
    func restoreState(_ state: VCPUState) throws(KVMError) {
        try setSpecialRegisters(state.specialRegisters)
        try setFloatingPointState(state.floatingPoint)
        if var xcrs = state.extendedControlRegisters { try kvmIoctl(fd, KVMRequest.setXCRs, &xcrs, "KVM_SET_XCRS") }
        if var debug = state.debugRegisters { try kvmIoctl(fd, KVMRequest.setDebugRegs, &debug, "KVM_SET_DEBUGREGS") }
        for start in stride(from: 0, to: state.msrs.count, by: 8) {
            try setMSRs(Array(state.msrs[start..<min(start + 8, state.msrs.count)]))
        }
        modifyRegisters { $0 = state.generalRegisters }
        setEvents(state.events)
    }

    /// The x87/SSE/AVX state.
    func floatingPointState(_ capabilities: VCPUStateCapabilities) throws(KVMError) -> FloatingPointState {
        if capabilities.xsave {
            var area = kvm_xsave()
            try kvmIoctl(fd, KVMRequest.getXSave, &area, "KVM_GET_XSAVE")
            return .xsave(RawBytes(area))
        }
        var fpu = kvm_fpu()
        try kvmIoctl(fd, KVMRequest.getFPU, &fpu, "KVM_GET_FPU")
        return .fpu(RawBytes(fpu))
    }

    /// Replaces the x87/SSE/AVX state (one ioctl).
    func setFloatingPointState(_ state: FloatingPointState) throws(KVMError) {
        switch state {
        case .xsave(let saved):
            var area = saved.value
            try kvmIoctl(fd, KVMRequest.setXSave, &area, "KVM_SET_XSAVE")
        case .fpu(let saved):
            var fpu = saved.value
            try kvmIoctl(fd, KVMRequest.setFPU, &fpu, "KVM_SET_FPU")
        }
    }

    private func getXCRs() throws(KVMError) -> kvm_xcrs {
        var xcrs = kvm_xcrs()
        try kvmIoctl(fd, KVMRequest.getXCRs, &xcrs, "KVM_GET_XCRS")
        return xcrs
    }

    private func getDebugRegisters() throws(KVMError) -> kvm_debugregs {
        var debug = kvm_debugregs()
        try kvmIoctl(fd, KVMRequest.getDebugRegs, &debug, "KVM_GET_DEBUGREGS")
        return debug
    }

    /// Reads the MSRs in `indices` that this KVM lets us read (KVM stops at the first it cannot).
    func getMSRs(_ indices: [UInt32]) throws(KVMError) -> [(index: UInt32, value: UInt64)] {
        var result: [(index: UInt32, value: UInt64)] = []
        for index in indices {
            var list = ckvm_msr_list()
            list.nmsrs = 1
            withUnsafeMutableBytes(of: &list.entries) { raw in
                raw.bindMemory(to: kvm_msr_entry.self)[0] = kvm_msr_entry(index: index, reserved: 0, data: 0)
            }
            let read = try kvmIoctl(fd, KVMRequest.getMSRs, &list, "KVM_GET_MSRS")
            guard read == 1 else { continue }
            let value = withUnsafeBytes(of: &list.entries) { $0.load(fromByteOffset: 8, as: UInt64.self) }
            result.append((index, value))
        }
        return result
    }
}

/// Which optional state components this KVM can save and restore.
struct VCPUStateCapabilities: Sendable {
    let xsave: Bool
    let xcrs: Bool
    let debugRegisters: Bool

    init(system: KVMSystem) {
        xsave = system.checkExtension(KVM_CAP_XSAVE) > 0
        xcrs = system.checkExtension(KVM_CAP_XCRS) > 0
        debugRegisters = system.checkExtension(KVM_CAP_DEBUGREGS) > 0
    }
}
