import ArgumentParser
import KVMSandbox

/// `kvmsandbox call`: snapshot a warmed guest once, fork it N times, call a function in each.
struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a guest to ks_ready(), snapshot it, then fork it N times and call a function in each.",
        discussion: """
        The guest's main() initializes and calls ks_ready() (from kvmsandbox.h). Each fork starts \
        paused there; FUNCTION is called with the integer ARGUMENTS (at most six), and its return \
        value printed. With --reset, one fork is reset to the snapshot between calls instead. \
        With --parked, one parked VM serves every call without VM exits (the snapshot gets a \
        request arena; see ParkedSandbox). Prints the time to make the snapshot, and per fork + call.
        """)

    @Option(name: .long, help: "How many forks (or resets with --reset).")
    var forks = 10

    @Flag(name: .long, help: "Use one fork and reset it after each call, instead of a new fork per call.")
    var reset = false

    @Flag(name: .long, help: "Call in one parked VM: no VM exit per call, the arena restored after each.")
    var parked = false

    @Option(name: .long, help: "With --parked: the request arena in KiB (stack and request heap).")
    var arena: UInt64 = 64

    @Option(name: .long, help: "With --parked: pages outside the arena kept writable (0: every write there means a slow reset).")
    var keptPages = 64

    @Flag(name: .long, help: "After every reset, compare every guest page and the whole vCPU state with the snapshot (fails on any difference).")
    var verifyReset = false

    @Option(name: .long, help: "Guest memory in MiB, or with a unit: 512M, 2G.")
    var memory: Mebibytes = 64

    @Option(name: .long, parsing: .unconditional, help: "Wall-clock limit per call in seconds, or with a unit: 500ms, 10s, 2m.")
    var timeout: Seconds?

    @Argument(help: "The guest program (a static x86-64 ELF that calls ks_ready()).")
    var program: String

    @Argument(help: "The function to call (an ELF symbol).")
    var function: String

    @Argument(help: "Integer arguments.")
    var arguments: [Int64] = []

    func validate() throws {
        _ = try OptionChecks.mebibytes(memory.count, option: "--memory")
        try OptionChecks.count(forks, in: 0...1_000_000_000, option: "--forks")
        try OptionChecks.timeout(timeout?.value)
        guard !(parked && reset) else { throw ValidationError("--parked and --reset exclude each other") }
        guard (16...65536).contains(arena) else { throw ValidationError("--arena must be from 16 to 65536 KiB") }
        guard (0...65536).contains(keptPages) else { throw ValidationError("--kept-pages must be from 0 to 65536") }
    }

    func run() throws {
        var configuration = SandboxConfiguration()
        configuration.memorySize = try OptionChecks.mebibytes(memory.count, option: "--memory")
        configuration.timeout = timeout?.value
        configuration.arguments = [program]
        configuration.verifyResets = verifyReset
        // What the guest prints is the command's output (the library's default is to capture it).
        (configuration.standardOutput, configuration.standardError) = (.fileDescriptor(1), .fileDescriptor(2))
        do {
            let start = monotonicNanoseconds()
            let snapshot = try Snapshot(elfPath: program, configuration: configuration)
            let made = monotonicNanoseconds()
            print("snapshot: \(snapshot.usedBytes >> 10) KiB in use, made in \(microseconds(made - start)) us (load + run to ks_ready)")
            let arguments = self.arguments.map { GuestArgument.integer(UInt64(bitPattern: $0)) }
            if parked { return try callParked(snapshot, arguments) }
            let shared = reset ? try snapshot.fork() : nil
            var total: UInt64 = 0
            for index in 0..<forks {
                let begin = monotonicNanoseconds()
                let vm = try shared ?? snapshot.fork()
                let outcome = try vm.call(function, arguments: arguments)
                if reset { try vm.reset() }
                let elapsed = monotonicNanoseconds() - begin
                total += elapsed
                guard case .returned(let value) = outcome else {
                    printError(Report.text(outcome))
                    throw ExitCode(outcome.exitStatus)
                }
                print("\(reset ? "reset" : "fork") \(index): \(function)(\(self.arguments.map(String.init).joined(separator: ", "))) = \(Int64(bitPattern: value))  [\(microseconds(elapsed)) us]")
            }
            if verifyReset && reset { print("every reset verified: guest memory and vCPU state identical to the snapshot") }
            if forks > 0 { print("mean per \(reset ? "call + reset" : "fork + call"): \(microseconds(total / UInt64(forks))) us") }
        } catch let error as SandboxError {
            printError("kvmsandbox: \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
    }

    /// `--parked`: every call in one parked VM; the first ten are listed, then a summary.
    private func callParked(_ snapshot: Snapshot, _ arguments: [GuestArgument]) throws {
        let vm = try ParkedSandbox(snapshot: try snapshot.parked(ParkingConfiguration(arenaSize: arena << 10, keptWritablePages: keptPages)), timeout: timeout?.value)
        let target = try vm.function(named: function)
        var total: UInt64 = 0
        for index in 0..<forks {
            let begin = monotonicNanoseconds()
            let outcome = try vm.call(target, arguments: arguments)
            let elapsed = monotonicNanoseconds() - begin
            total += elapsed
            guard case .returned(let value) = outcome else {
                printError(Report.text(outcome))
                throw ExitCode(outcome.exitStatus)
            }
            if index < 10 {
                print("parked \(index): \(function)(\(self.arguments.map(String.init).joined(separator: ", "))) = \(Int64(bitPattern: value))  [\(elapsed) ns]")
            }
        }
        let statistics = vm.statistics
        print("parked: \(statistics.requests) calls, \(statistics.fastResets) fast resets, \(statistics.slowResets) slow resets, \(statistics.exits) VM exits, \(statistics.pagesUnprotected) pages written outside the arena")
        if verifyReset { print("every reset verified: guest memory and vCPU state identical to the snapshot") }
        if forks > 0 { print("mean per call + reset: \(total / UInt64(forks)) ns") }
    }

    private func microseconds(_ nanoseconds: UInt64) -> String { String(nanoseconds / 1000) }
}
