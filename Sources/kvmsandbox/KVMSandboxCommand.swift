import ArgumentParser
import KVMSandbox

@main
struct KVMSandboxCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvmsandbox",
        abstract: "Run untrusted static x86-64 programs in KVM micro-VMs.",
        subcommands: [Run.self, Call.self, CC.self, Bench.self, ConformanceCommand.self, Doctor.self])
}
