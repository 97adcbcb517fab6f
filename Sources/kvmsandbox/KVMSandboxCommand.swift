import ArgumentParser
import KVMSandbox
#if canImport(Glibc)
import Glibc
#endif

@main
struct KVMSandboxCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvmsandbox",
        abstract: "Run untrusted x86-64 programs in KVM micro-VMs.",
        version: "kvmsandbox \(kvmsandboxVersion) (snapshot format \(Snapshot.fileFormatVersion))",
        subcommands: [Run.self, Serve.self, MCPCommand.self, SnapshotCommand.self, Call.self, CC.self, Bench.self, ConformanceCommand.self, Doctor.self])

    /// Parses the command line (after `GuestArgumentSplit` takes the guest's own arguments off
    /// it) and runs the subcommand.
    static func main() async {
        // Guest output into a closed pipe must be an error for the guest (-EPIPE), not a
        // signal that kills every VM in this process.
        signal(SIGPIPE, SIG_IGN)
        // The library reads no environment: KVMSANDBOX_SYSCALLS is the CLI's to map.
        if let transport = HostCallTransport.fromEnvironment() { HostCallTransport.setProcessDefault(transport) }
        do {
            var command = try parseAsRoot(GuestArgumentSplit.split(Array(CommandLine.arguments.dropFirst())))
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// This build's version (`kvmsandbox --version`).
let kvmsandboxVersion = "0.5.0"
