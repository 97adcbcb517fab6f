import ArgumentParser
import Foundation
import KVMSandbox
#if canImport(Glibc)
import Glibc
#endif

/// `kvmsandbox run`: one guest in a fresh micro-VM; exits with the guest's status.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an x86-64 Linux program (static or dynamic) in a fresh micro-VM and exit with its status.",
        discussion: """
        Exit status: the guest's own (0-255); 122 every guest thread waited on a futex nothing \
        could wake (a deadlock); 123 a host failure while the guest ran (a KVM \
        ioctl failed); 124 timeout; 125 kvmsandbox could not run it (no KVM, invalid ELF, too \
        little memory); 64 a usage error; 126 the program is not an executable file (a directory, a device); 127 the \
        program was not found (in PATH, for a name without '/'); 121 the guest broke the \
        host-call ABI; 128+N a CPU \
        exception, N being the signal a Linux process would get (132 #UD, 133 #BP, 134 abort(), \
        135 #AC, 136 #DE/#XM, 139 #PF/#GP and others). Reports go to stderr.
        """)

    @Option(name: .long, help: "Guest memory in MiB, or with a unit: 512M, 2G (everything: image, stack, heap, page tables), committed as the guest touches it (default 1024).")
    var memory: Mebibytes = 1024

    @Option(name: .long, parsing: .unconditional, help: "Wall-clock limit in seconds (fractions allowed), or with a unit: 500ms, 10s, 2m, 1h.")
    var timeout: Seconds?

    @Option(name: .long, help: "Stack size in KiB.")
    var stack: UInt64 = 1024

    @Option(name: .customLong("env"), help: "Add NAME=value to the guest's environment (repeatable); NAME alone passes the host's value, if it has one (as docker run -e NAME).")
    var environment: [String] = []

    @Option(name: .long, help: "How CPU exceptions reach the host: automatic, shutdownExit (PVM) or idtStubs (hardware KVM).")
    var exceptionDelivery: String = "automatic"

    @Option(name: .long, help: "How embedder host calls travel: automatic, exit or exitless.")
    var hostCalls: String = "automatic"

    @Option(name: .long, help: "How Linux system calls travel: automatic, exitless (served by a polling host thread where they need nothing of the vCPU) or exit. Default: KVMSANDBOX_SYSCALLS, else automatic.")
    var syscalls: String?

    @Option(name: .customLong("allow-connect"), help: "IPv4:PORT the guest may connect to (repeatable); every other connect is EACCES.")
    var allowConnect: [String] = []

    @OptionGroup var files: FileOptions

    @Option(name: .long, help: "The guest's working directory (default: this one when a grant covers it, else /).")
    var cwd: String?

    @Option(name: .long, help: "The most address space the guest's mmap mappings may span, reservations included, in GiB (default 16384).")
    var addressSpace: UInt64 = 16384

    @Option(name: .long, help: "Host memory the Linux layer may hold for the guest (in-memory files, pipes, epoll, mapping records, threads), in MiB or with a unit (default: half of --memory, at least 32).")
    var hostMemory: Mebibytes?

    @Option(name: .long, help: "Bytes the guest may add to the host's disk under its --rw grants, in MiB or with a unit such as 1G (writes past it: ENOSPC). Default: no quota.")
    var diskQuota: Mebibytes?

    @Option(name: .long, help: "The most threads the guest may have at once (clone past it: EAGAIN).")
    var maxThreads: Int = 64

    @Option(name: .long, help: "The most processes the guest may have at once, itself and zombies included (fork past it: EAGAIN). Each is its own micro-VM and host thread.")
    var maxProcesses: Int = 64

    @Flag(name: .customLong("allow-exec-writable"), help: "Let the guest execve programs under --rw grants and in-memory directories (what it may have written itself). Default: EACCES.")
    var allowExecWritable = false

    @Flag(name: .long, help: "Allow anonymous memory that is executable, or writable and executable at once (V8-style JITs). Default: W^X.")
    var allowJit = false

    @Flag(name: .customLong("no-aslr"), help: "Give the guest the same addresses in every run (no address-space layout randomization; like setarch -R), for reproducible runs.")
    var noASLR = false

    @Flag(name: .long, help: "Do not make the system library directories, /etc/ld.so.cache, the program and its loader visible to a dynamic program.")
    var noSystemLibraries = false

    @Flag(name: .customLong("no-system-view"), help: "Do not show the default read-only system view (/usr, a curated /etc, synthesized /etc/passwd, group, hostname, hosts): only the grants (and, for a dynamic program, its libraries).")
    var noSystemView = false

    @Option(name: .customLong("system-view"), help: "Add a host path to the read-only system view, at the same path (repeatable; as --ro).")
    var systemViewPaths: [String] = []

    @Flag(name: .long, help: "Print every Linux system call the guest makes, with its result, to stderr.")
    var traceSyscalls = false

    @Flag(name: .long, help: "No vDSO: clock_gettime, gettimeofday, time and getcpu become system calls (by default they run in the guest, without an exit).")
    var noVdso = false

    @Option(name: .long, help: "Write the --trace-syscalls lines to this file instead of stderr (implies --trace-syscalls; the file is created or truncated).")
    var traceOutput: String?

    @Option(name: .long, help: "Also write the outcome (fault, registers, backtrace) as JSON to this file.")
    var reportJSON: String?

    @Option(name: .customLong("stop-timeout"), help: "Seconds the guest has to end after the first SIGINT, SIGTERM or SIGHUP forwarded to it before it gets SIGKILL (as docker's --stop-timeout).")
    var stopTimeout: Double = 10

    @Flag(name: .long, help: "Print the platform and exit counters to stderr.")
    var verbose = false

    @Flag(name: .long, help: "No hints after a failed run (paths outside the grants, the working directory, W^X, --memory); reports of faults and timeouts still go to stderr.")
    var quiet = false

    @Argument(help: "The guest program: an x86-64 ELF, static or dynamic (a name without '/' is looked up in PATH).")
    var program: String

    @Argument(parsing: .captureForPassthrough, help: "Arguments passed to the guest.")
    var arguments: [String] = []

    func validate() throws {
        _ = try OptionChecks.mebibytes(memory.count, option: "--memory")
        _ = try OptionChecks.kibibytes(stack, option: "--stack")
        try OptionChecks.timeout(timeout?.value)
        guard (1...4096).contains(maxThreads) else { throw ValidationError("--max-threads must be between 1 and 4096") }
        guard (1...1024).contains(maxProcesses) else { throw ValidationError("--max-processes must be between 1 and 1024") }
        guard (1...65536).contains(addressSpace) else { throw ValidationError("--address-space must be between 1 and 65536 GiB") }
        // Usage errors all exit 64 with the usage, before anything is loaded.
        guard memory.count <= UInt64.max >> 20, stack <= UInt64.max >> 10, memory.count << 20 > stack << 10 else {
            throw ValidationError("--memory \(memory) MiB must be larger than --stack \(stack) KiB")
        }
        _ = try transports()
        for destination in allowConnect where LinuxDestination.parse(destination) == nil {
            throw ValidationError("--allow-connect takes IPv4:PORT (e.g. 127.0.0.1:5432), not \(destination)")
        }
        for (option, grant) in try files.labelledGrants() where !FileManager.default.fileExists(atPath: grant.hostPath) {
            throw ValidationError("\(option): \(grant.hostPath) does not exist")
        }
    }

    /// The values of --exception-delivery, --host-calls and --syscalls (nil: the default); an
    /// unknown one is a usage error.
    func transports() throws -> (exceptions: ExceptionDelivery, hostCalls: HostCallTransport, syscalls: HostCallTransport?) {
        guard let delivery = ExceptionDelivery(rawValue: exceptionDelivery) else {
            throw ValidationError("--exception-delivery must be one of \(ExceptionDelivery.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let choices = HostCallTransport.allCases.map(\.rawValue).joined(separator: ", ")
        guard let hostCallTransport = HostCallTransport(rawValue: hostCalls) else {
            throw ValidationError("--host-calls must be one of \(choices)")
        }
        guard let syscalls else { return (delivery, hostCallTransport, nil) }
        guard let syscallTransport = HostCallTransport(rawValue: syscalls) else { throw ValidationError("--syscalls must be one of \(choices)") }
        return (delivery, hostCallTransport, syscallTransport)
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        var configuration = SandboxConfiguration()
        configuration.memorySize = try OptionChecks.mebibytes(memory.count, option: "--memory")
        configuration.stackSize = try OptionChecks.kibibytes(stack, option: "--stack")
        configuration.timeout = timeout?.value
        configuration.files = try files.grants()
        configuration.workingDirectory = cwd
        configuration.memoryDirectories = files.memoryDirectories(grants: configuration.files)
        configuration.traceSyscalls = traceSyscalls || traceOutput != nil
        if noVdso { configuration.timeInGuest = false }
        if let traceOutput {
            let descriptor = open(traceOutput, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else {
                throw ValidationError("--trace-output: cannot create \(traceOutput): \(String(cString: strerror(errno)))")
            }
            configuration.traceDescriptor = descriptor  // open until this process exits
        }
        configuration.standardInput = .fileDescriptor(0)
        // The guest's output is the command's (the library's default is to capture it).
        (configuration.standardOutput, configuration.standardError) = (.fileDescriptor(1), .fileDescriptor(2))
        let split = GuestArgumentSplit.parts
        let command = try Self.command(program, arguments: arguments + split.guestArguments)
        configuration.programPath = command.program
        configuration.arguments = command.argv
        configuration.allowJIT = allowJit
        configuration.randomizeLayout = !noASLR
        configuration.maximumThreads = maxThreads
        configuration.maximumProcesses = maxProcesses
        configuration.executesWritableFiles = allowExecWritable
        configuration.addressSpaceLimit = addressSpace << 30
        if let hostMemory { configuration.hostMemoryLimit = try OptionChecks.mebibytes(hostMemory.count, option: "--host-memory") }
        if let diskQuota { configuration.diskQuota = try OptionChecks.mebibytes(diskQuota.count, option: "--disk-quota") }
        configuration.systemLibraries = !noSystemLibraries
        configuration.systemView = !noSystemView
        configuration.files += systemViewPaths.map { FileGrant(hostPath: $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0) }
        configuration.files += command.scripts.map { FileGrant(hostPath: $0) }
        configuration.environment = Self.environment(environment + split.environment)
        // (validate() has refused unknown values and malformed --allow-connect destinations.)
        let transports = try transports()
        configuration.exceptionDelivery = transports.exceptions
        configuration.hostCallTransport = transports.hostCalls
        if let syscallTransport = transports.syscalls { configuration.systemCallTransport = syscallTransport }
        configuration.allowedConnections = allowConnect
        let sandbox: Sandbox
        do {
            sandbox = try Sandbox(elfPath: command.program, configuration: configuration)
        } catch {
            printError("kvmsandbox: \(command.program): \(error)")
            throw ExitCode(error == .loadTimedOut ? ExitStatus.timeout : ExitStatus.sandboxError)
        }
        if let cwd, !sandbox.guestDirectoryExists(cwd) {
            throw ValidationError("--cwd \(cwd): no such directory in the guest's view (grant it with --ro or --rw, or make it a --tmpfs)")
        }
        if verbose {
            var line = "kvmsandbox: platform \(sandbox.platform.rawValue), entry 0x\(String(sandbox.program.entry, radix: 16))"
            if let loader = sandbox.interpreter {
                line += ", dynamic: loader \(loader.path ?? "?") at 0x\(String(loader.base, radix: 16))"
            }
            printError(line)
        }
        // SIGINT, SIGTERM and SIGHUP go to the guest, SIGKILL after --stop-timeout.
        let forwarding = SignalForwarding(to: sandbox.signalSender, grace: stopTimeout)
        defer { forwarding.stop() }
        let outcome: RunOutcome
        do {
            outcome = try sandbox.run()
        } catch {
            printError("kvmsandbox: host failure while the guest ran: \(error)")
            throw ExitCode(ExitStatus.hostFailure)
        }
        // After an execve the program running is another image: report on that one.
        let image = sandbox.currentImage
        if verbose {
            let statistics = image.statistics
            printError("kvmsandbox: \(outcome); \(statistics.exits) exits, \(statistics.hostCalls) host calls, \(image.systemCallCounts.values.reduce(0, +)) Linux system calls (\(image.exitlessSystemCallCounts.values.reduce(0, +)) without an exit), \(statistics.translationFlushes) translation flushes (\(statistics.translationFlushNanoseconds / 1000) us)")
            let processes = sandbox.processStatistics
            if processes.processes > 1 || processes.images > 0 {
                printError("kvmsandbox: \(processes.processes) process(es), \(processes.images) execve(s); \(processes.exits) exits in all (the figures above are the last program's)")
            }
            let (held, budget) = image.hostMemory
            let disk = image.diskUsage
            printError("kvmsandbox: host memory held for the guest at the end: \(held >> 10) KiB of \(budget >> 10) KiB"
                       + (disk.quota.map { "; disk added: \(disk.added >> 10) KiB of \($0 >> 10) KiB" } ?? ""))
            let missing = image.unimplementedSystemCalls.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }
            if !missing.isEmpty { printError("kvmsandbox: not implemented (answered ENOSYS): \(missing.joined(separator: ", "))") }
            if image.refusedExecutableMappings > 0 {
                printError("kvmsandbox: refused \(image.refusedExecutableMappings) request(s) for writable+executable or executable anonymous memory with EACCES (W^X; --allow-jit permits them)")
            }
        }
        if case .exited = outcome {} else { printError(Report.text(outcome)) }
        // Hints for a run that failed (off with --quiet; the report above is the outcome itself).
        let hints = !quiet && outcome != .exited(status: 0)
        if !verbose, hints, image.refusedExecutableMappings > 0 {
            printError("kvmsandbox: refused \(image.refusedExecutableMappings) request(s) for writable+executable or executable anonymous memory with EACCES (W^X); a JIT (node, PHP's PCRE, guile) needs --allow-jit")
        }
        let denied = image.deniedHostPaths
        if !denied.isEmpty, hints {
            // Deny by default, said once: what the guest looked for that the host has.
            let shown = denied.prefix(5).map { SystemView.holdsCredentials($0) ? "\($0) (credentials: withheld)" : "\($0) (--ro \($0))" }
                .joined(separator: ", ")
            printError("kvmsandbox: the guest looked for \(denied.count == Sandbox.deniedPathsKept ? "\(denied.count)+" : "\(denied.count)") path(s) outside its grants that exist on the host: \(shown)")
        }
        let hostDirectory = FileManager.default.currentDirectoryPath
        if cwd == nil, hints, sandbox.workingDirectory == "/", hostDirectory != "/" {
            printError("kvmsandbox: the current directory \(hostDirectory) is not granted, so the guest started in / (--ro \(hostDirectory) or --rw would show it)")
        }
        if image.memoryLimitHits > 0, hints {
            printError("kvmsandbox: the guest hit --memory \(memory) MiB (\(image.memoryLimitHits) request(s) for memory refused with ENOMEM); a larger --memory may let it finish")
        }
        if let reportJSON {
            let wall = Double(DispatchTime.now().uptimeNanoseconds &- started) / 1e9
            do { try Report.write(Array(Report.json(outcome, sandbox: image, wallSeconds: wall)), to: reportJSON) } catch {
                printError("kvmsandbox: cannot write \(reportJSON): \(error)")
                throw ExitCode(ExitStatus.sandboxError)
            }
        }
        throw ExitCode(outcome.exitStatus)
    }
}

extension Run {
    /// The PATH a guest gets when `--env` gives none, as `docker run` gives a container one:
    /// programs that start others (`gcc` looking for `ld`, `make`, `xargs`) search it.
    static let defaultPath = "PATH=/usr/local/bin:/usr/bin:/bin"

    /// `--env` entries, a bare NAME taking the host's value (left out when the host has none),
    /// and `defaultPath` unless they set PATH.
    static func environment(_ entries: [String]) -> [String] {
        let chosen = entries.compactMap { entry in
            if entry.contains("=") { return entry }
            return ProcessInfo.processInfo.environment[entry].map { "\(entry)=\($0)" }
        }
        return chosen.contains { $0.hasPrefix("PATH=") } ? chosen : [defaultPath] + chosen
    }

    /// What runs for `program` with `arguments`: the ELF to load and its argv (argv[0] as typed,
    /// or the path found in PATH, since the guest has no PATH to search; a `#!` script runs its
    /// interpreter as execve would: `Program.lookup`), and the scripts the guest must be able to
    /// read. A program that cannot start is reported with a shell's status (127, 126).
    static func command(_ program: String, arguments: [String]) throws -> (program: String, argv: [String], scripts: [String]) {
        do {
            // The library reads no environment: the CLI searches its own PATH.
            let found = try Program.lookup(program, arguments: arguments, searchPath: ProcessInfo.processInfo.environment["PATH"])
            return (found.executable, found.arguments, found.scripts)
        } catch {
            printError("kvmsandbox: \(error.message)")
            throw ExitCode(error.status)
        }
    }
}

func printError(_ message: String) {
    var text = message
    if !text.hasSuffix("\n") { text += "\n" }
    _ = text.withCString { write(2, $0, strlen($0)) }
}
