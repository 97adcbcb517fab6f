import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The Linux personality: the guest's `syscall` instruction is a Linux system call, with Linux
/// semantics and errnos, served here. Embedder host calls are not reachable this way (they
/// travel by `out`, `ks_hostcall`). Areas live in their own files: files (`LinuxFiles`),
/// identity, limits, time and signal storage (`LinuxProcess`), memory permissions
/// (`LinuxMemory`); the memory calls that host calls share (brk, mmap, munmap), output and exit
/// are the built-in host calls'.
final class LinuxPersonality {
    /// Everything the personality changes, as one value: a snapshot keeps it, a reset puts it back.
    struct State: Codable {
        var files = FileTable.standard()
        var cwd = "/"
        /// Installed signal actions (the kernel's 32-byte `struct sigaction`), by signal number.
        var signalActions: [Int: [UInt8]] = [:]
        /// ITIMER_REAL (`alarm`, `setitimer`): when SIGALRM is next due (monotonic ns), and its period.
        var alarmDeadline: UInt64?
        var alarmInterval: UInt64 = 0
        var threadName: [UInt8] = Array("guest".utf8) + [UInt8](repeating: 0, count: 11)
        var umask: UInt64 = 0o022
        /// How far a `.bytes` standard input has been read.
        var inputOffset = 0
        /// The in-memory directories (`--tmpfs`).
        var memoryFiles = MemoryFileSystem(mounts: [], capacity: 0)
        /// Pipes this process holds an end of, by pipe id (shared with the processes it forks),
        /// and which ends it has counted in each (`syncPipeEnds`).
        var pipes: [Int: Pipe] = [:]
        var pipeHolds: [Int: PipeHold] = [:]
        var nextPipe = 0
        /// Files mapped with `mmap`, for `/proc/self/maps` and for naming code in backtraces.
        var fileMappings: [FileMapping] = []
        /// The guest's threads (the first is the main thread, tid 1), the running one's index,
        /// and the next thread id.
        var threads = [GuestThread(tid: 1)]
        /// epoll sets (by id: what each watches, by guest fd) and eventfd counters.
        var epolls: [Int: [Int32: EpollInterest]] = [:]
        var eventCounters: [Int: EventCounter] = [:]
        /// Sockets with no host counterpart (socket mode), by id, and the connections offered
        /// to the listening one that its `accept` has not taken yet.
        var sockets: [Int: VirtualSocket] = [:]
        var pendingConnections: [HostFile] = []
        var nextObject = 0
        var currentThread = 0
        var nextThreadID: Int32 = 2
        /// CPU time the guest had in runs that ended (`guestCPUNanoseconds`).
        var cpuNanoseconds: UInt64 = 0
    }
    var state: State
    let space: AddressSpace
    let builtins: BuiltinHostCalls
    let fileSystem: FileSystemView
    var input: InputSource
    /// The program's path, as `/proc/self/exe` names it.
    let programPath: String
    let stackSize: UInt64
    /// The program's image (and its loader's): where `mprotect` may make file pages executable.
    let imageRanges: [Range<UInt64>]
    /// The dynamic loader's path, for a dynamic program.
    let interpreterPath: String?
    /// The lowest byte of the stack (its top is randomized per fresh VM).
    let stackBottom: UInt64
    /// One past the highest byte of the stack.
    var stackTop: UInt64 { stackBottom + stackSize }
    /// Calls made, by number; calls answered `ENOSYS` because they are not implemented, by number.
    var counts: [Int: Int] = [:]
    var unimplemented: [Int: Int] = [:]
    /// Calls served by the polling thread without an exit, by number (also in `counts`).
    var exitlessCounts: [Int: Int] = [:]
    /// Requests for writable-and-executable or executable anonymous memory refused (W^X).
    var refusedExecutable = 0
    /// The most bytes of host memory the Linux layer may hold for the guest (`hostBytesInUse`).
    let hostMemoryLimit: Int
    /// `SandboxConfiguration.diskQuota`, and what the guest added to the disk so far (over the
    /// VM's life: a reset puts the guest's state back, not the host's files).
    let diskQuota: Int?
    var diskBytesAdded = 0
    /// Paths the guest looked for outside its grants that the host has (the first 16).
    var deniedHostPaths: [String] = []
    /// During a run: the thread running the vCPU, and its guest time (ticks) at the start.
    var cpuThread: pid_t?
    var cpuTicksStart: UInt64 = 0
    /// Whether the polling thread is serving a call (which then must not wait: `mustNotWait`).
    var servingExitless = false
    /// Whether a call that would wait must instead block its thread (another thread may end the
    /// wait) or be undone (on the polling thread).
    var mustNotWait: Bool { servingExitless || state.threads.count > 1 }
    /// This process's id, and the sandbox's process table once it has more than one process.
    var pid: Int32 = 1
    var processes: ProcessTable?
    /// Whether the default system view is shown (its synthesized `/etc` files among them).
    let systemView: Bool
    /// The CPUs the guest is told it has (1-64; `SandboxConfiguration.processors`).
    let processors: Int
    /// Whether `execve` may run files from writable grants (`SandboxConfiguration.executesWritableFiles`).
    let executesWritableFiles: Bool
    /// Whether W^X is lifted for anonymous memory (`SandboxConfiguration.allowJIT`).
    let allowJIT: Bool
    /// The most threads the guest may have at once (`SandboxConfiguration.maximumThreads`).
    let maximumThreads: Int
    /// Whether the guest may listen for connections (`SandboxConfiguration.acceptsConnections`).
    let acceptsConnections: Bool
    /// Where it may connect to (`SandboxConfiguration.allowedConnections`), as IPv4 sockaddr bytes 2..<8.
    let allowedConnections: Set<[UInt8]>

    init(space: AddressSpace, builtins: BuiltinHostCalls, fileSystem: FileSystemView, configuration: SandboxConfiguration,
         image: ProgramImage, stackBottom: UInt64) {
        self.stackBottom = stackBottom
        self.imageRanges = [image.program.imageRange] + (image.interpreter.map { [$0.imageRange] } ?? [])
        self.interpreterPath = image.interpreter?.path
        self.space = space
        self.builtins = builtins
        self.fileSystem = fileSystem
        self.input = configuration.standardInput
        self.programPath = configuration.programPath ?? configuration.arguments.first ?? "/guest"
        self.stackSize = configuration.stackSize
        self.allowJIT = configuration.allowJIT
        self.maximumThreads = configuration.maximumThreads
        self.acceptsConnections = configuration.acceptsConnections
        self.allowedConnections = Set(configuration.allowedConnections.compactMap(Self.destination))
        var state = State()
        // The in-memory files are part of the host budget: never more than it.
        state.memoryFiles = MemoryFileSystem(mounts: configuration.memoryDirectories,
                                             capacity: min(configuration.memoryDirectoryCapacity, Int(clamping: configuration.effectiveHostMemoryLimit)),
                                             grants: fileSystem.mounts.map(\.guestPath))
        self.hostMemoryLimit = Int(clamping: configuration.effectiveHostMemoryLimit)
        self.systemView = configuration.systemView
        processors = min(max(configuration.processors ?? availableCPUs(), 1), 64)
        self.executesWritableFiles = configuration.executesWritableFiles
        self.diskQuota = configuration.diskQuota.map { Int(clamping: $0) }
        state.cwd = Self.initialDirectory(configuration.workingDirectory, fileSystem: fileSystem)
        self.state = state
    }

    /// `--cwd` when given; else the host's current directory when the guest can see it (a grant
    /// covers it or lies beneath it); else `/`.
    static func initialDirectory(_ requested: String?, fileSystem: FileSystemView) -> String {
        if let requested { return FileSystemView.normalize(requested, cwd: "/") }
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        let name = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        let host = FileSystemView.normalize(String(decoding: name, as: UTF8.self), cwd: "/")
        // Inside a grant, or a directory on the way to one (`--ro data` from the directory above it).
        return fileSystem.locate(host) != nil || fileSystem.isAncestorOfAMount(host) ? host : "/"
    }

    /// Whether `path` names a directory in the guest's view as it starts: in a tmpfs, a granted
    /// directory or one inside a grant, or a directory on the way to a grant. (For the
    /// operator's `--cwd`, before the guest runs: never a guest-controlled path.)
    func guestDirectoryExists(_ path: String) -> Bool {
        let path = FileSystemView.normalize(path, cwd: "/")
        if state.memoryFiles.covers(path) {
            return state.memoryFiles.status(path).map { $0.st_mode & S_IFMT == S_IFDIR } ?? false
        }
        if let (mount, relative) = fileSystem.locate(path) {
            guard mount.fileName == nil else { return false }
            var status = stat()
            return fstatat(mount.directory.fd, relative, &status, 0) == 0 && status.st_mode & S_IFMT == S_IFDIR
        }
        return fileSystem.isAncestorOfAMount(path)
    }

    /// The vCPU's kick flag: reads from a host stdin and sleeps stop waiting once it is set.
    var interrupter: VCPUInterrupter? { builtins.interrupter }

    /// Whether the host sent signals the run loop has not taken yet (`pause` ends for them,
    /// SIGCHLD included, which is posted without a kick).
    var hostSignalsPending: () -> Bool = { false }

    /// Threads waiting on a futex word in shared memory: the object and the ticket of the wait
    /// (`sharedFutexWait`), by thread id.
    var sharedWaits: [Int32: (object: SharedMemoryObject, ticket: UInt64)] = [:]
    /// What other processes ring to wake this one's idle wait (made at its first shared wait).
    var doorbell: Doorbell?
    /// Whether the call being served is one a thread runs again after a wait (`restart`).
    private(set) var callIsRerun = false

    /// Serves system call `call.number`.
    func handle(_ call: HostCall) throws -> HostCallEffect {
        counts[call.number, default: 0] += 1
        // A call re-run after a wait keeps the timeout it started with; any other starts afresh.
        let current = state.currentThread
        callIsRerun = state.threads[current].restart
        if !callIsRerun { state.threads[current].restartDeadline = nil }
        state.threads[current].restart = false
        let effect = try dispatch(call)
        // Descriptors may have changed (close, dup2 over a pipe end): pipes learn which ends remain.
        if !state.pipes.isEmpty { syncPipeEnds() }
        // A file call that would block (an empty pipe other threads may fill, an eventfd at 0):
        // the thread waits and the call runs again when something changes.
        if effect == .value(-Int64(Self.restart.rawValue)) {
            blockRestarting(until: nil)
            return .thread(.block)
        }
        return effect
    }

    /// The architecture's system calls (`SystemCallTable.guest`).
    static let systemCalls = SystemCallTable.guest

    private func dispatch(_ call: HostCall) throws -> HostCallEffect {
        guard let entry = Self.systemCalls[call.number] else { return notServed(call) }
        if let refusal = refusalForHostBudget(call, cost: entry.hostCost) { return refusal }
        return try entry.handler(self, call)
    }

    /// A call the layer does not serve: ENOSYS, as a kernel without it, counted in `unimplemented`.
    func notServed(_ call: HostCall) -> HostCallEffect {
        unimplemented[call.number, default: 0] += 1
        return Self.fail(.noFunction)
    }

    /// `-errno` as an effect.
    static func fail(_ error: Errno) -> HostCallEffect { .value(-Int64(error.rawValue)) }
}

/// A file's bytes mapped into the guest (`mmap` of a file): which file, and from what offset.
public struct FileMapping: Sendable, Equatable, Codable {
    /// The first guest address and one past the last.
    public var start: UInt64, end: UInt64
    /// The guest path the file was opened by.
    public var path: String
    /// The file offset of `start`.
    public var offset: UInt64
    /// Whether the mapping is executable (library code).
    public var executable: Bool
}

extension HostCall {
    /// Argument `index` as a file descriptor: Linux takes the low 32 bits (`int fd`), so
    /// `AT_FDCWD` arrives as -100 whatever the upper half of the register holds.
    func descriptor(_ index: Int) -> Int64 { Int64(Int32(truncatingIfNeeded: arguments[index])) }
}
