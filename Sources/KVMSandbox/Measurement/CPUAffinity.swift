import CHost

/// CPU pinning for benchmarks and tests that need everything on one core (e.g. to measure what
/// exitless calls cost when the polling thread has no core of its own).
package enum CPUAffinity {
    /// Pins the calling thread to `cpu`; false if the kernel refused.
    package static func pinCurrentThread(to cpu: Int) -> Bool { chost_pin_to_cpu(Int32(cpu)) == 0 }

    /// Lets the calling thread run on every CPU again.
    package static func unpinCurrentThread() { _ = chost_unpin() }

    /// Pins the exitless-call polling thread to `cpu` (nil: any CPU), from its next spin on.
    package static func pinExitlessPoller(to cpu: Int?) { MailboxPoller.shared.pin(cpu: cpu) }

    /// CPUs this process may run on.
    package static var availableCPUs: Int { KVMSandbox.availableCPUs() }
}
