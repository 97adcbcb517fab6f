/// The cheapest VM KVM can make: `KVM_CREATE_VM` plus `KVM_CREATE_VCPU` (and its `kvm_run`
/// mapping), no memory. What a fork is compared with (`kvmsandbox bench`).
package enum BareVM {
    /// Creates and destroys one bare VM with a vCPU; returns the nanoseconds creating took.
    package static func create(system: KVMSystem? = nil) throws(SandboxError) -> Double {
        let kvm: KVMSystem
        if let system { kvm = system } else { kvm = try KVMSystem.shared() }
        do {
            let start = monotonicNanoseconds()
            let vm = try kvm.createVM()
            let vcpu = try vm.createVCPU()
            let elapsed = Double(monotonicNanoseconds() - start)
            withExtendedLifetime((vm, vcpu)) {}
            return elapsed
        } catch {
            throw .kvm(error)
        }
    }
}
