import ArgumentParser
import KVMSandbox

/// `kvmsandbox bench`: placeholder replaced below.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure host-call round trips against the bare exit.")
    func run() throws {}
}
