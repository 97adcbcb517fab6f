import CHost
#if canImport(Glibc)
import Glibc
#endif

/// Limits and inputs for one sandbox.
public struct SandboxConfiguration: Sendable, Codable {
    /// Guest memory in bytes: everything the guest has (image, page tables, stack, heap).
    public var memorySize: UInt64 = 64 << 20
    /// Stack size in bytes; an unmapped guard page lies below it.
    public var stackSize: UInt64 = 1 << 20
    /// Wall-clock limit for `run()`, in seconds; nil for none. A freshly loaded sandbox's first
    /// run counts it from the start of loading (loading is bounded by it as well); a fork's runs
    /// and calls each get the whole of it.
    public var timeout: Double?
    /// argv, including argv[0].
    public var arguments: [String] = ["guest"]
    /// envp, as `NAME=value` strings.
    public var environment: [String] = []
    /// Where the guest's fd 1 goes: captured by default (`Sandbox.capturedOutput(fd:)`, bounded
    /// by `outputLimit`), so that an embedding server never has a guest write into its own
    /// stdout; `.fileDescriptor(1)` to pass it through, as `kvmsandbox run` does.
    public var standardOutput: OutputDestination = .capture
    /// Where the guest's fd 2 goes: captured by default, as `standardOutput`.
    public var standardError: OutputDestination = .capture
    /// The most bytes the guest may write to fd 1 and 2 together; writes past it fail with `-EFBIG`.
    public var outputLimit: UInt64 = 64 << 20

    /// Where the guest's fd 0 reads from (`kvmsandbox run` passes its own stdin).
    public var standardInput: InputSource = .empty
    /// Host files and directories the guest may see (Linux system calls); nothing else exists.
    public var files: [FileGrant] = []
    /// Writable in-memory directories (`--tmpfs /tmp`): part of the VM's state, so snapshots
    /// and resets cover them. Their files hold at most `memoryDirectoryCapacity` bytes in all.
    public var memoryDirectories: [String] = []
    /// The most bytes the files of `memoryDirectories` may hold together.
    public var memoryDirectoryCapacity = 16 << 20
    /// The most host memory the Linux layer may hold for this guest, in bytes: in-memory files
    /// (contents and names), pipe buffers, epoll and eventfd records, file-mapping and
    /// address-range records, threads, virtual sockets, open descriptions. Past it, calls that
    /// would hold more fail as Linux fails them short of memory (`mmap`, `pipe`, `epoll_ctl`,
    /// `eventfd`, `socket`: ENOMEM; `clone`: EAGAIN; in-memory files: ENOSPC). nil: half of
    /// `memorySize`, at least 32 MiB. Captured output has its own bound, `outputLimit`.
    public var hostMemoryLimit: UInt64?
    /// `hostMemoryLimit`, or its default.
    public var effectiveHostMemoryLimit: UInt64 { hostMemoryLimit ?? max(32 << 20, memorySize / 2) }
    /// The most bytes the guest may add to the host's disk under its writable grants (file
    /// growth in allocated blocks, plus 4 KiB per file or directory it creates; what it removes
    /// is given back), counted over the VM's life; past it writes and creates are ENOSPC.
    /// nil: no quota.
    public var diskQuota: UInt64?
    /// The guest's initial working directory; default: the host's when a grant covers it, else `/`.
    public var workingDirectory: String?
    /// The program's path as the guest sees it (`/proc/self/exe`); default: `arguments[0]`.
    public var programPath: String?
    /// For a dynamic program: make its loader, its own file, `/etc/ld.so.cache` and the system
    /// library directories (`SystemLibraries.directories`) visible read-only, besides `files`.
    public var systemLibraries = true
    /// Show every program the default read-only view of the system (`SystemView`: `/usr`, a
    /// curated `/etc`, synthesized `/etc/passwd`, `group`, `hostname` and `hosts`), besides
    /// `files`. Off (`--no-system-view`): only `files` and, for a dynamic program, the system
    /// libraries.
    public var systemView = true
    /// Randomize the address-space layout of every fresh VM (stack, mmap region and loader,
    /// heap, a position-independent program), as Linux does; false gives the same addresses in
    /// every run (`kvmsandbox run --no-aslr`, like `setarch -R`). Forks of a snapshot share the
    /// snapshot's layout, as children of a pre-forking server share their parent's.
    public var randomizeLayout = true
    /// Let the guest map anonymous memory executable, and writable and executable at once (V8's
    /// code space). Off by default: W^X holds, a RW->RX `mprotect` flip (LuaJIT) is allowed.
    public var allowJIT = false
    /// The most address space the guest's `mmap` mappings may span, reservations included
    /// (default 16 TiB; Go reserves ~0.7 GiB, node ~1 GiB). Separate from `memorySize`, which
    /// bounds memory that is committed (mapped accessible). Past it, `mmap` is `ENOMEM`.
    public var addressSpaceLimit: UInt64 = 1 << 44
    /// The most threads an unmodified program may have at once (`clone` past it: `EAGAIN`).
    /// They share the one vCPU; each one's stack is the program's own memory.
    public var maximumThreads = 64
    /// The most processes the guest may have at once, zombies included (`fork`/`clone` past it:
    /// `EAGAIN`, as `RLIMIT_NPROC`). Each is a micro-VM of its own, with `memorySize` of its own.
    public var maximumProcesses = 64
    /// The CPUs the guest is told it has (`sched_getaffinity`, `/sys/devices/system/cpu/online`:
    /// what `nproc`, `os.cpu_count()` and `make -j$(nproc)` read). Nil: as many as this host
    /// process may run on (at most 64), since the processes of a sandbox run in parallel on host
    /// threads of their own; the threads of one process share its one vCPU.
    public var processors: Int?
    /// Let `execve` run a file from a writable grant (a program the guest may have written:
    /// new code). Off: such an `execve` is `EACCES`, as on a `noexec` mount; files in the
    /// in-memory directories are never executable.
    public var executesWritableFiles = false
    /// Socket mode: the guest may create TCP sockets and listen on one (nothing is bound on the
    /// host); the connections the embedder hands over with `Sandbox.offerConnection` are what
    /// its `accept` returns. Off: every `socket` is `EACCES` (no network). Outgoing connections
    /// are refused unless `allowedConnections` names them.
    public var acceptsConnections = false
    /// The only destinations the guest may `connect` to, as `"IPv4:PORT"` (e.g. a database at
    /// `"127.0.0.1:5432"`); every other `connect` is `EACCES`. Non-empty: the guest may create
    /// TCP sockets even outside socket mode. No name resolution is offered (no UDP).
    public var allowedConnections: [String] = []
    /// Print every Linux system call (name, arguments, result) to the host's stderr.
    public var traceSyscalls = false
    /// Whether a vDSO serves `clock_gettime`, `gettimeofday`, `time` and `getcpu` in the guest,
    /// without a system call (`VDSO`; nil, the default, or true). false: no vDSO is mapped and
    /// every such call is a system call (for comparisons: `run --no-vdso`).
    public var timeInGuest: Bool?
    /// Where `traceSyscalls` writes: a host file descriptor the embedder keeps open while the
    /// sandbox (and the processes it starts) run; the sandbox never closes it. nil: stderr.
    public var traceDescriptor: Int32?

    /// How embedder host calls travel: by exit, or exitless through the shared mailbox.
    public var hostCallTransport: HostCallTransport = .automatic
    /// How an unmodified program's Linux system calls travel (through the user `syscall` stub on
    /// PVM, the CPL 0 entry on hardware KVM): `.exitless` posts every call to the mailbox and the host's polling thread
    /// serves those that need nothing of the vCPU (reads and writes of files and pipes with
    /// data, stat, clocks, getpid, ...), the rest by exit; `.automatic` does so from a run's
    /// first system call by exit on, where this process may use two CPUs and one of them is
    /// free (the load average says so when the process first decides); `.exit` never.
    /// The default comes from `KVMSANDBOX_SYSCALLS` (exit, exitless, automatic) when set.
    public var systemCallTransport: HostCallTransport = HostCallTransport.processDefault

    /// Paranoid resets: after every `reset()` of a fork, compare every guest page and the whole
    /// vCPU state with the snapshot, and throw `SandboxError.resetVerificationFailed` on any
    /// difference. Costs a comparison of all of guest memory per reset; for tests and audits.
    public var verifyResets = false

    /// How CPU exceptions reach the host: chosen from the platform unless set.
    public var exceptionDelivery: ExceptionDelivery = .automatic

    /// The defaults: 64 MiB memory, 1 MiB stack, no timeout, output to this process's stdout/stderr.
    public init() {}

    func validate() throws(SandboxError) {
        guard memorySize >= 1 << 20, memorySize % PageSize.bytes == 0, memorySize <= GuestMemory.maximumSize else {
            throw .invalidConfiguration("memory must be a multiple of 4 KiB between 1 MiB and \(GuestMemory.maximumSize >> 30) GiB")
        }
        guard stackSize >= 16 * PageSize.bytes, stackSize % PageSize.bytes == 0, stackSize < memorySize else {
            throw .invalidConfiguration("stack must be a multiple of 4 KiB, at least 64 KiB and smaller than memory")
        }
        if let timeout, !(timeout > 0 && timeout.isFinite) {
            throw .invalidConfiguration("timeout must be a positive number of seconds")
        }
        guard !arguments.isEmpty else { throw .invalidConfiguration("arguments must include argv[0]") }
    }
}

/// How CPU exceptions in the guest reach the host.
public enum ExceptionDelivery: String, Sendable, CaseIterable, Codable {
    /// PVM: the exit; hardware KVM (VMX/SVM): the IDT stubs.
    case automatic
    /// No IDT: the exception is a `KVM_EXIT_SHUTDOWN` with the vector in the vCPU events.
    /// Works on PVM only; on hardware the vector is lost in a triple fault.
    case shutdownExit
    /// A host-built IDT whose CPL 0 stubs report the exception by an exit on port 0x43
    /// (`ExceptionStubs`). Required on hardware KVM.
    case idtStubs

    /// What `automatic` means on `platform`.
    func resolved(on platform: KVMPlatform) -> ExceptionDelivery {
        guard self == .automatic else { return self }
        return platform.reportsExceptionsWithoutIDT ? .shutdownExit : .idtStubs
    }

    /// Whether, on `platform`, exceptions arrive through the IDT stubs.
    func usesStubs(on platform: KVMPlatform) -> Bool { resolved(on: platform) == .idtStubs }
}

/// How a guest's embedder host calls (`KS_HOSTCALL_USER` and up, made with the SDK's
/// `ks_hostcall`) reach their handlers. Results and errors are the same either way.
public enum HostCallTransport: String, Sendable, CaseIterable, Codable {
    /// Exitless where it can win: when this process may run on at least two CPUs, and from a
    /// run's first embedder call on (that one goes by exit and wakes the poller), so runs
    /// that make no calls pay nothing for it.
    case automatic
    /// Always a VM exit (`out %al, $0x42`).
    case exit
    /// Through the mailbox page from the first call, served by a host polling thread; the guest
    /// falls back to an exit after a bounded spin, so it works even without a free core.
    case exitless

    /// The default of `SandboxConfiguration.systemCallTransport` in this process: `.automatic`
    /// unless the CLI or a test suite set another (`setProcessDefault`). The library never reads
    /// the environment: the CLI maps `KVMSANDBOX_SYSCALLS` onto this, an embedder sets the
    /// configuration.
    package static var processDefault: HostCallTransport { processDefaultStorage.withLock { $0 } }
    private static let processDefaultStorage = HostMutex<HostCallTransport>(.automatic)

    /// Makes `transport` the default of every configuration made from now on in this process.
    package static func setProcessDefault(_ transport: HostCallTransport) {
        processDefaultStorage.withLock { $0 = transport }
    }

    /// `KVMSANDBOX_SYSCALLS` (exit, exitless or automatic) as a process default, for the CLI and
    /// the test suite (which run every sandbox of a process one way with it); nil when unset.
    package static func fromEnvironment() -> HostCallTransport? {
        getenv("KVMSANDBOX_SYSCALLS").flatMap { HostCallTransport(rawValue: String(cString: $0)) }
    }

    /// `automatic` decided for this process, for embedder host calls: exitless where this
    /// process may use two CPUs (a parked VM's host calls and its fast reset rely on it).
    public var resolved: HostCallTransport {
        guard self == .automatic else { return self }
        return availableCPUs() >= 2 ? .exitless : .exit
    }

    /// `automatic` decided for this process, for a program's Linux system calls (see
    /// `automaticChoice`: only where a CPU is free).
    public var resolvedForSystemCalls: HostCallTransport {
        guard self == .automatic else { return self }
        return Self.automaticChoice
    }

    /// Decided once per process: exitless when the process may use two CPUs or more and one of
    /// them is free (the one-minute load average leaves a CPU idle). A polling thread pays off
    /// only on a core of its own: with both of this machine's two cores busy, `python3 -c pass`
    /// took 92 ms exitless against 76 ms by exit (median of 11, interleaved).
    private static let automaticChoice: HostCallTransport = {
        let cpus = availableCPUs()
        guard cpus >= 2 else { return .exit }
        var load = [0.0]
        guard getloadavg(&load, 1) == 1 else { return .exitless }
        return load[0] + 1 <= Double(cpus) ? .exitless : .exit
    }()
}

/// CPUs this process may run on (its affinity mask).
func availableCPUs() -> Int { Int(chost_available_cpus()) }

/// Checks of `SandboxConfiguration.allowedConnections` entries.
public enum LinuxDestination {
    /// The port and address of `"a.b.c.d:port"`, or nil when it is not one.
    public static func parse(_ text: String) -> (address: String, port: UInt16)? {
        guard let bytes = LinuxPersonality.destination(text) else { return nil }
        return (bytes[2...].map(String.init).joined(separator: "."), UInt16(bytes[0]) << 8 | UInt16(bytes[1]))
    }
}
