/// The thinnest guest-to-host round trip this library's KVM layer can make: a guest that loops on
/// `out %al, $0x42`, and a host loop that only re-enters `KVM_RUN`. It is the floor the host-call
/// path is compared with (`kvmsandbox bench`).
package final class ExitFloor {
    private let memory: GuestMemory
    private let space: AddressSpace
    private let vm: VirtualMachine
    private let vcpu: VirtualCPU

    /// A VM whose code is `out %al, $0x42; jmp .-2`.
    package init(system: KVMSystem? = nil) throws(SandboxError) {
        let kvm: KVMSystem
        if let system { kvm = system } else { kvm = try KVMSystem.shared() }
        memory = try GuestMemory(size: 1 << 20)
        space = try AddressSpace(memory: memory)
        let code: UInt64 = 0x10000
        try space.mapNew(code, length: PageSize.bytes, [.read, .execute])
        do { try space.hostWrite([0xe6, UInt8(hostCallPort), 0xeb, 0xfc], at: code) } catch {
            preconditionFailure("code page was just mapped")
        }
        try X86CPUState.installSystemTables(in: space)
        do {
            (vm, vcpu) = try MicroVM.create(system: kvm, memory: memory, space: space, entry: code, stackPointer: 0, exceptionStubs: false)
        } catch {
            throw .kvm(error)
        }
    }

    /// Makes `count` round trips; returns nanoseconds per round trip.
    package func measure(count: Int) throws(SandboxError) -> Double {
        let start = monotonicNanoseconds()
        for _ in 0..<count {
            let exit: VCPUExit
            do { exit = try vcpu.run() } catch { throw .kvm(error) }
            guard case .io = exit else { throw .invalidConfiguration("floor guest left its loop: \(exit)") }
        }
        return Double(monotonicNanoseconds() - start) / Double(count)
    }
}
