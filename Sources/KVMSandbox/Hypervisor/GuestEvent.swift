/// Why the guest stopped running, in the sandbox's terms rather than a hypervisor's exit codes:
/// what the run loop (`Sandbox.runLoop`) acts on. A backend decodes its own exits into these
/// (KVM's: `VirtualCPU.nextEvent`), so the run loop never sees `KVM_EXIT_*`.
enum GuestEvent: Equatable {
    /// The guest's host-call trap on the host-call channel (x86-64: an `out` of one byte to
    /// `hostCallPort`). Hypervisors report other instruction forms the same way, so the run loop
    /// checks that the instruction was the ABI's before serving it.
    case hostCallTrap
    /// A write to the doorbell, the first guest-physical byte past guest memory: a host call
    /// made by a memory access (for guests that cannot trap otherwise).
    case doorbell
    /// The host's exception stubs reporting a CPU exception (when the VM has them).
    case exceptionReport
    /// A CPU exception the hypervisor stopped on (no stubs): its vector and error code.
    case exception(vector: UInt8, errorCode: UInt32?)
    /// A CPU exception the hypervisor could not report (it became a triple fault): its words.
    case exceptionLost(detail: String)
    /// Any other access to a port: a violation of the ABI.
    case portAccess(port: UInt16, isOut: Bool, size: Int)
    /// An access to guest-physical memory nothing backs (other than the doorbell).
    case unbackedMemory(address: UInt64, isWrite: Bool, length: Int)
    /// The dirty-page log is full: harvest it and run on.
    case dirtyLogFull
    /// The run was interrupted: a kick (timeout, time slice, host signal) or a signal.
    case interrupted
    /// The hypervisor could not enter the guest: its reason.
    case entryFailed(detail: String)
    /// Anything else, by the hypervisor's name for it.
    case unexpected(name: String)
}
