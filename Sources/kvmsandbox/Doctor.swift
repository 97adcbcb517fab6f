import ArgumentParser
import KVMSandbox
import KVMSandboxTools

/// `kvmsandbox doctor`: what this machine's KVM is and whether the sandbox can use it.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the KVM platform, API version and capabilities, and what is missing.")

    func run() throws {
        print("platform: \(KVMPlatform.detect().rawValue)")
        do {
            let system = try KVMSystem()
            print("/dev/kvm: API version \(system.apiVersion), vcpu mmap size \(system.vcpuMmapSize)")
            for (name, value) in KVMCapabilityReport.values(system) { print("  \(name): \(value)") }
            print("ready: yes")
        } catch {
            print("ready: no: \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        do {
            let toolchain = try GuestToolchain()
            print("guest compiler: \(toolchain.compiler); SDK headers: \(toolchain.includeDirectory)")
        } catch {
            print("guest compiler: \(error)")
        }
    }
}
