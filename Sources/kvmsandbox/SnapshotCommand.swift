import ArgumentParser
import Foundation
import KVMSandbox

/// What `serve` and `snapshot` start from: a program with its files, environment and memory,
/// run to its ready point (its first read of stdin, or its wait for a connection).
struct ProgramOptions: ParsableArguments {
    @Option(name: .long, help: "Guest memory in MiB, per VM.")
    var memory: UInt64 = 256

    @Option(name: .long, help: "Wall-clock limit of the start-up to the ready point, in seconds.")
    var bootTimeout: Double = 60

    @OptionGroup var files: FileOptions

    @Option(name: .customLong("env"), help: "NAME=value for the program's environment (repeatable).")
    var environment: [String] = []

    @Option(name: .long, help: "How the program's Linux system calls travel: exit (default for serving: with the load generator or clients on the machine, a polling thread has no core to itself), exitless or automatic.")
    var syscalls: String = "exit"

    @Option(name: .customLong("allow-connect"), help: "IPv4:PORT the program may connect to (repeatable); every other connect is EACCES.")
    var allowConnect: [String] = []

    @Argument(parsing: .captureForPassthrough, help: "-- PROGRAM ARGUMENTS...")
    var command: [String] = []

    /// The program and its arguments (after `--`).
    var program: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

    func validate() throws {
        _ = try OptionChecks.mebibytes(memory, option: "--memory")
        try OptionChecks.timeout(bootTimeout)
        for destination in allowConnect where LinuxDestination.parse(destination) == nil {
            throw ValidationError("--allow-connect takes IPv4:PORT (e.g. 127.0.0.1:5432), not \(destination)")
        }
        guard HostCallTransport(rawValue: syscalls) != nil else {
            throw ValidationError("--syscalls must be one of \(HostCallTransport.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// The configuration to boot the program with: output captured (logged on failures),
    /// sockets virtualised (a server listens; a filter never notices), the program found in PATH.
    func configuration() throws -> (executable: String, configuration: SandboxConfiguration) {
        let executable = Run.resolve(program[0])
        var configuration = SandboxConfiguration()
        configuration.memorySize = try OptionChecks.mebibytes(memory, option: "--memory")
        configuration.timeout = bootTimeout
        configuration.files = try files.grants()
        configuration.memoryDirectories = files.tmpfs
        configuration.environment = environment
        configuration.programPath = executable
        configuration.arguments = [program[0].contains("/") ? program[0] : executable] + program.dropFirst()
        configuration.acceptsConnections = true
        configuration.allowedConnections = allowConnect
        configuration.systemCallTransport = HostCallTransport(rawValue: syscalls) ?? .exit
        configuration.standardOutput = .capture
        configuration.standardError = .capture
        return (executable, configuration)
    }

    /// Boots the program to its ready point and snapshots it there.
    func boot() throws -> Snapshot {
        let (executable, configuration) = try configuration()
        do {
            return try Snapshot(elfPath: executable, configuration: configuration, readyAt: .firstWait)
        } catch {
            printError("kvmsandbox: \(executable) did not reach its ready point (its first read of stdin, or a wait for a connection): \(error)")
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
          kvmsandbox snapshot -o app.snap --ro handlers -- /usr/bin/python3 handlers/app.py
          kvmsandbox serve --snapshot app.snap --listen 127.0.0.1:8080
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
        do { try snapshot.write(to: output) } catch {
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
