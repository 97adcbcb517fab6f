import ArgumentParser
import Foundation
import KVMSandbox

/// What `serve` and `snapshot` start from: a program with its files, environment and memory,
/// run to its ready point (its first read of stdin, or its wait for a connection).
struct ProgramOptions: ParsableArguments, Sendable {
    @Option(name: .long, help: "Guest memory in MiB or with a unit (512M, 2G), per VM, committed as the guest touches it (default 1024; a snapshot's is fixed).")
    var memory: Mebibytes?

    @Option(name: .long, parsing: .unconditional, help: "Wall-clock limit of the start-up to the ready point, in seconds or with a unit: 500ms, 90s, 2m (default 60).")
    var bootTimeout: Seconds?

    @OptionGroup var files: FileOptions

    @Option(name: .customLong("env"), help: "NAME=value for the program's environment (repeatable).")
    var environment: [String] = []

    @Option(name: .long, help: "How the program's Linux system calls travel: exit (default for serving: with the load generator or clients on the machine, a polling thread has no core to itself), exitless or automatic.")
    var syscalls: String?

    @Option(name: .long, help: "A file of 16 to 4096 secret bytes: `snapshot` signs the file with it (HMAC-SHA256), `serve --snapshot` refuses a file whose tag does not verify with it.")
    var key: String?

    @Option(name: .customLong("allow-connect"), help: "IPv4:PORT the program may connect to (repeatable); every other connect is EACCES.")
    var allowConnect: [String] = []

    @Flag(name: .customLong("no-system-view"), help: "Do not show the default read-only system view (/usr, a curated /etc, synthesized identity files): only the grants.")
    var noSystemView = false

    @Flag(name: .customLong("no-aslr"), help: "Boot with the same addresses as every other snapshot of this program (no address-space layout randomization).")
    var noASLR = false

    @Flag(name: .customLong("no-vdso"), help: "No vDSO: clock_gettime, gettimeofday, time and getcpu become system calls (for comparisons).")
    var noVdso = false

    @Argument(parsing: .captureForPassthrough, help: "-- PROGRAM ARGUMENTS...")
    var command: [String] = []

    /// The program and its arguments (after `--`).
    var program: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

    func validate() throws {
        // An option this command does not know, before `--`, lands in the program's place: say
        // so (or show the help) instead of booting a program named after it.
        if let first = command.first, first != "--", first.hasPrefix("-") {
            if first == "--help" || first == "-h" { throw CleanExit.helpRequest() }
            throw ValidationError("unknown option \(first) (the program and its arguments go after --)")
        }
        _ = try OptionChecks.mebibytes(memory?.count ?? 1024, option: "--memory")
        try OptionChecks.timeout(bootTimeout?.value ?? 60)
        for destination in allowConnect where LinuxDestination.parse(destination) == nil {
            throw ValidationError("--allow-connect takes IPv4:PORT (e.g. 127.0.0.1:5432), not \(destination)")
        }
        guard HostCallTransport(rawValue: syscalls ?? "exit") != nil else {
            throw ValidationError("--syscalls must be one of \(HostCallTransport.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// The configuration to boot the program with: output captured (logged on failures),
    /// sockets virtualised (a server listens; a filter never notices), the program found in PATH.
    func configuration() throws -> (executable: String, configuration: SandboxConfiguration) {
        // The program found in PATH; a #! script boots its interpreter, as `run` does.
        let target = try Run.command(program[0], arguments: Array(program.dropFirst()))
        var configuration = SandboxConfiguration()
        configuration.memorySize = try OptionChecks.mebibytes(memory?.count ?? 1024, option: "--memory")
        configuration.timeout = bootTimeout?.value ?? 60
        configuration.files = try files.grants()
        configuration.memoryDirectories = files.memoryDirectories(grants: configuration.files)
        configuration.environment = Run.environment(environment)
        configuration.programPath = target.program
        configuration.arguments = target.argv
        configuration.files += target.scripts.map { FileGrant(hostPath: $0) }
        if noVdso { configuration.timeInGuest = false }
        configuration.acceptsConnections = true
        configuration.allowedConnections = allowConnect
        configuration.systemCallTransport = HostCallTransport(rawValue: syscalls ?? "exit") ?? .exit
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        configuration.randomizeLayout = !noASLR
        configuration.systemView = !noSystemView
        return (target.program, configuration)
    }

    /// The key of `--key`, read; nil without the option.
    func snapshotKey() throws -> SnapshotKey? {
        guard let key else { return nil }
        do { return try SnapshotKey(contentsOf: key) } catch {
            throw ValidationError("--key: \(error)")
        }
    }

    /// Boots the program to its ready point and snapshots it there.
    /// A program that ends before its ready point is reported with what it wrote last (a
    /// Python traceback, a missing module), each way of ending worded for what it is.
    /// `say` prints each line (default: on stderr after "kvmsandbox: "; `serve` logs them).
    func boot(say: (String) -> Void = { printError("kvmsandbox: " + $0) }) throws -> Snapshot {
        let (executable, configuration) = try configuration()
        say("booting \(executable) to its ready point (its first read of stdin, or a wait for a connection)...")
        let sandbox: Sandbox
        let outcome: RunOutcome
        do {
            sandbox = try Sandbox(elfPath: executable, configuration: configuration)
            outcome = try sandbox.runUntilReady(at: .firstWait)
        } catch {
            say("\(executable) could not start: \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        guard outcome == .ready else {
            let reason: String
            switch outcome {
            case .exited(let status): reason = "exited with status \(status) before its ready point"
            case .timedOut: reason = "did not reach its ready point within --boot-timeout \(configuration.timeout ?? 0) s"
            default: reason = "ended before its ready point: \(outcome)"
            }
            say("\(executable) \(reason)")
            for (name, fd) in [("stderr", Int32(2)), ("stdout", 1)] {
                let tail = String(decoding: sandbox.capturedOutput(fd: fd).suffix(2048), as: UTF8.self)
                    .split(separator: "\n", omittingEmptySubsequences: false).suffix(12).joined(separator: "\n")
                if !tail.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                    say("its \(name) ended with:\n\(tail)")
                }
            }
            throw ExitCode(ExitStatus.sandboxError)
        }
        do { return try Snapshot(of: sandbox) } catch {
            say("cannot snapshot \(executable) at its ready point: \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
    }
}

/// `kvmsandbox snapshot -o FILE -- PROGRAM`: boots a program to its ready point and saves the
/// snapshot, for `serve --snapshot FILE` in another process or on another machine.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Boot a program to its ready point and save the snapshot to a file.",
        discussion: """
        The ready point is the program's first read of standard input (a filter) or its first \
        wait for a connection (a server). The file holds the memory pages in use, the vCPU and \
        Linux-layer state and the identity (size and contents) of the program and every file it \
        mapped; `serve --snapshot FILE` refuses it if any of them changed. Example:
          kvmsandbox snapshot -o upper.snap --ro Examples -- python3 Examples/upper.py
          kvmsandbox serve --snapshot upper.snap --listen 127.0.0.1:8080
        """)

    @Option(name: .shortAndLong, help: "The snapshot file to write.")
    var output: String

    @OptionGroup var options: ProgramOptions

    func validate() throws {
        guard !options.program.isEmpty else { throw ValidationError("give the program after --") }
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        let snapshot = try options.boot()
        let booted = DispatchTime.now().uptimeNanoseconds
        do { try snapshot.write(to: output, key: try options.snapshotKey()) } catch let error as SnapshotFileError {
            printError("kvmsandbox: snapshot: \(error)")
            throw ExitCode(ExitStatus.sandboxError)
        }
        let written = DispatchTime.now().uptimeNanoseconds
        var status = stat()
        _ = stat(output, &status)
        let mode = snapshot.waitsForConnections ? "a server waiting for connections" : "a filter reading stdin"
        printError(String(format: "kvmsandbox: snapshot of %@ (%@) written to %@: %.1f MiB; boot %.1f ms, write %.1f ms",
                          options.program[0], mode, output, Double(status.st_size) / 1_048_576,
                          Double(booted - started) / 1e6, Double(written - booted) / 1e6))
    }
}

extension ProgramOptions {
    /// A loaded snapshot file narrowed by this command line: grants and destinations may only
    /// be a part of the file's; options the file fixes (its memory, environment, in-memory
    /// directories, system-call transport, start-up) are a usage error naming the option when
    /// they would change it.
    func narrowing(_ snapshot: Snapshot) throws -> Snapshot {
        let fixed = snapshot.configuration
        if let memory, memory.count << 20 != fixed.memorySize {
            throw ValidationError("--memory \(memory): the snapshot's memory is fixed at \(fixed.memorySize >> 20) MiB (its page tables and heap live in it)")
        }
        if !environment.isEmpty {
            throw ValidationError("--env: the environment is in the snapshot's memory (the program already read it); take a new snapshot to change it")
        }
        if !files.tmpfs.isEmpty && files.tmpfs.map({ FileManagerPath.normalize($0) }) != fixed.memoryDirectories.map({ FileManagerPath.normalize($0) }) {
            throw ValidationError("--tmpfs: the snapshot's in-memory directories (\(fixed.memoryDirectories.joined(separator: ", "))) hold its state and cannot change")
        }
        if let syscalls, HostCallTransport(rawValue: syscalls) != fixed.systemCallTransport {
            throw ValidationError("--syscalls \(syscalls): the snapshot was taken with \(fixed.systemCallTransport.rawValue)")
        }
        if bootTimeout != nil { throw ValidationError("--boot-timeout: a snapshot file has already started") }
        if noASLR { throw ValidationError("--no-aslr: a snapshot file's layout was chosen when it was taken") }
        if noSystemView && fixed.systemView { throw ValidationError("--no-system-view: the snapshot was taken with the system view (narrow it with --ro instead)") }
        var grants: [FileGrant]?
        if files.givesGrants {
            let labelled = try files.labelledGrants()
            for (option, grant) in labelled {
                if let reason = snapshot.policyRefusal(for: grant) { throw ValidationError("\(option) widens the snapshot's policy: \(reason)") }
            }
            grants = labelled.map(\.grant)
        }
        for destination in allowConnect where !fixed.allowedConnections.contains(destination) {
            throw ValidationError("--allow-connect \(destination) widens the snapshot's policy: it may connect to \(fixed.allowedConnections.isEmpty ? "nothing" : fixed.allowedConnections.joined(separator: ", "))")
        }
        do {
            return try snapshot.narrowed(files: grants, allowedConnections: allowConnect.isEmpty ? nil : allowConnect)
        } catch {
            throw ValidationError("\(error)")
        }
    }
}

/// Guest paths compared as the sandbox normalizes them (no trailing or repeated slashes).
enum FileManagerPath {
    static func normalize(_ path: String) -> String {
        "/" + path.split(separator: "/").joined(separator: "/")
    }
}
