import Logging
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One guest program in its own micro-VM: one vCPU at CPL 3, its own memory, no devices.
///
/// ```swift
/// let sandbox = try Sandbox(elfPath: "hello.elf")
/// try sandbox.register(0x1000) { call in Int64(call[0] * 2) }
/// let outcome = try sandbox.run()
/// ```
/// A sandbox is used from one thread at a time. A fresh one runs its guest once; a fork of a
/// `Snapshot` can call guest functions, run, and be `reset()` to the snapshot any number of times.
public final class Sandbox {
    /// The limits and inputs it was created with.
    public let configuration: SandboxConfiguration
    /// The loaded program (entry, base, symbols).
    public var program: LoadedProgram { image.program }
    /// A dynamic program's loader (ld.so), nil for a static program.
    public var interpreter: LoadedProgram? { image.interpreter }
    /// The program, its loader and where the mmap region starts.
    let image: ProgramImage
    /// Which kind of KVM runs it.
    public var platform: KVMPlatform { system.platform }
    /// The host file the program was loaded from, when known (a snapshot file names it).
    var hostProgramPath: String?
    /// Whether this run's system calls may be posted to the mailbox (set at the run's start).
    var postsSystemCalls = false
    /// Whether `syscall` enters an exitless entry (the user one on PVM, the CPL 0 one on
    /// hardware KVM), that is unless `systemCallTransport = .exit`.
    var syscallStubPosts: Bool { configuration.systemCallTransport != .exit }
    /// VM exits so far, host calls served, translation flushes and what the last reset copied.
    public internal(set) var statistics = RunStatistics()

    let system: KVMSystem
    let memory: GuestMemory
    let vm: VirtualMachine
    let vcpu: VirtualCPU
    let space: AddressSpace
    let builtins: BuiltinHostCalls
    /// The Linux personality: what the guest's `syscall` instruction reaches.
    let linux: LinuxPersonality
    /// Where the stack ends (its lowest mapped byte).
    let stackBottom: UInt64
    /// The snapshot this sandbox was forked from, and its reset machinery.
    let fork: ForkState?
    /// Stops this sandbox's guest from any thread (`RunOutcome.interrupted`); the pools use it
    /// for task cancellation.
    public let interruptHandle = InterruptHandle()
    /// The embedder's host-call handlers, by number.
    var handlers: [Int: HostCallHandler] = [:]
    var exceptionHandler: ExceptionHandler?
    var phase = Phase.notStarted
    /// The exitless-call mailbox (`GuestLayout.mailboxPage`) and, during a run that uses it, its server.
    let mailbox: Mailbox
    let mailboxPhysical: UInt64
    /// The vDSO's clock data, refreshed before every entry (nil: no vDSO in this VM).
    var clockPage: GuestClockPage?
    var exitless: ExitlessServer?
    /// The sandbox's mailbox server, made on first use and kept across runs.
    lazy var exitlessServer = ExitlessServer(mailbox: mailbox, memory: guestMemory, interrupter: vcpu.interrupter)
    /// Signals from the host for the guest (`signalSender`), made on first use.
    lazy var hostSignals = HostSignals(interrupter: vcpu.interrupter)
    /// Whether `signalSender` was handed out (only then does a run watch for host signals).
    var hostSignalsTaken = false

    /// Sends the guest signals from any thread, as `kill` would from another process: what
    /// `kvmsandbox run` forwards its SIGINT, SIGTERM and SIGHUP with (`HostSignals`).
    public var signalSender: HostSignals {
        hostSignalsTaken = true
        return hostSignals
    }
    /// What the current run loop stops at.
    var currentStop = StopCondition.end
    /// A parked VM's layout (a fork of a parked snapshot, or a sandbox being parked).
    var parkingLayout: ParkingLayout?
    /// A parked VM's link to the thread that posts its requests (`ParkedSandbox`).
    var parkingMonitor: ParkingMonitor?
    /// Guest-physical pages a parked VM was let write since the last reset: their writable
    /// translations must be dropped when the reset protects them again (and, as each came from
    /// a resumed write fault, CR2 and the exception state must be put back).
    var parkedUnprotectedPages: [UInt64] = []
    /// When a fresh sandbox started loading its program: its first run's deadline counts from
    /// there, so `timeout` covers loading and running together (nil for forks).
    var loadStarted: UInt64?
    let logger = Logger(label: "kvmsandbox")
    /// The wall-clock limit of each run from now on, instead of `configuration.timeout` (a
    /// server's per-request limit on forks of a snapshot that booted under another).
    public var timeout: Double?
    /// `timeout`, else the configuration's.
    var effectiveTimeout: Double? { timeout ?? configuration.timeout }
    /// The current run's deadline, for code that waits on the host during a run.
    var runDeadline: Watchdog.Token?
    /// When the running guest thread got the vCPU (time slices).
    var sliceStarted: UInt64 = 0
    /// When the current run's deadline passes (monotonic ns), if it has one.
    var runEnds: UInt64?
    /// The image an `execve` of this one loaded, which `run()` goes on with.
    var replacement: Sandbox?
    /// The last image an `execve` loaded (`currentImage`).
    var execChain: Sandbox?
    /// The images this one replaced by `execve` in its process: how many, and their VM exits.
    var earlierImages = (count: 0, exits: 0)

    /// Where the guest is in its life.
    enum Phase {
        /// Created, not run yet.
        case notStarted
        /// Stopped at `ks_ready()` (a fork starts here) or after a guest function returned:
        /// `run()` resumes it, `call` may call into it, `snapshot()` may copy it.
        case paused(GuestRegisters)
        /// Inside `run()` or `call`.
        case running
        /// Ended; only a fork's `reset()` brings it back.
        case finished(RunOutcome)
    }

    /// Why the run loop stops besides the guest ending.
    enum StopCondition {
        /// Run to the end; `ks_ready()` just returns 0.
        case end
        /// Stop at `ks_ready()`.
        case ready
        /// Stop when the guest function returns through the return stub.
        case guestReturn
        /// Stop just before the guest's first read of its standard input.
        case inputRead
        /// Stop just before a read of standard input once all of `standardInput` has been read
        /// (an interactive session's turn: `runUntilInputNeeded`).
        case inputExhausted
        /// Stop when the guest waits for a connection with none pending and none open.
        case connectionWait
        /// Stop at whichever of `inputRead` and `connectionWait` comes first.
        case firstWait
        /// A parked VM: stop (with `.ready`) when the idle stub sleeps, or when the thread that
        /// posts requests asks (`ParkingMonitor.stopRequested`); no run deadline.
        case parked

        /// Whether a read of standard input stops the run.
        var stopsAtInputRead: Bool { self == .inputRead || self == .firstWait }
        /// Whether a wait for a connection stops the run.
        var stopsAtConnectionWait: Bool { self == .connectionWait || self == .firstWait }
    }

    /// Exit counters of a run.
    public struct RunStatistics: Sendable, Equatable {
        /// Every return from `KVM_RUN`.
        public var exits = 0
        /// Host calls served (by `out` or by `syscall`).
        public var hostCalls = 0
        /// Times KVM was made to drop its cached translations (memslot re-created) after the
        /// guest's page tables lost permissions (`mprotect`, file `mmap`, `MAP_FIXED`).
        public var translationFlushes = 0
        /// Nanoseconds those flushes took, the invalidation calls only.
        public var translationFlushNanoseconds: UInt64 = 0
        /// Pages the last `reset()` copied back from the snapshot (what the guest dirtied).
        public var pagesRestoredByLastReset = 0
    }

    /// Loads the ELF file at `elfPath` into a new VM. A dynamic program's loader is read through
    /// the guest's view of the files (see `SandboxConfiguration.systemLibraries`).
    public convenience init(elfPath: String, configuration: SandboxConfiguration = .init(),
                            system: KVMSystem? = nil) throws(SandboxError) {
        let bytes: [UInt8]
        do { bytes = try readFile(elfPath) } catch {
            throw .invalidConfiguration("cannot read \(elfPath): \(error)")
        }
        let elf: ELFFile
        do { elf = try ELFFile(bytes: bytes) } catch { throw .invalidELF(error) }
        try self.init(elf: elf, hostPath: elfPath, configuration: configuration, system: system)
    }

    /// Loads `elf` into a new VM, ready to `run()`.
    public convenience init(elf: ELFFile, configuration: SandboxConfiguration = .init(), system given: KVMSystem? = nil) throws(SandboxError) {
        try self.init(elf: elf, hostPath: nil, configuration: configuration, system: given)
    }

    /// Loads `elf`, read from `hostPath` when known (a dynamic program's own file is then
    /// visible to it at its guest path, as `/proc/self/exe` names it).
    convenience init(elf: ELFFile, hostPath: String?, configuration: SandboxConfiguration, system given: KVMSystem?) throws(SandboxError) {
        try configuration.validate()
        let system: KVMSystem
        if let given { system = given } else { system = try KVMSystem.shared() }
        let memory = try GuestMemory(size: configuration.memorySize, backing: .privateHugePages)
        let space = try AddressSpace(memory: memory)
        let loadStarted = monotonicNanoseconds()
        let loadDeadline = configuration.timeout.map { loadStarted &+ UInt64(min($0, 1e9) * 1e9) }
        let fileSystem = try Self.fileSystem(for: configuration, interpreter: elf.interpreter, hostPath: hostPath)
        // Address-space layout randomization, as Linux does for every execve (unless --no-aslr).
        let layout: GuestLayout.Randomization = configuration.randomizeLayout ? .random() : .fixed
        let stackBottom = layout.stackTop - configuration.stackSize
        let image = try ProgramImage.load(elf, into: space, fileSystem: fileSystem,
                                          top: Self.mmapTop(stackBottom: stackBottom) - layout.mmapShift,
                                          pieBase: layout.pieBase, deadline: loadDeadline)
        try space.mapNew(stackBottom, length: configuration.stackSize, [.read, .write])
        let vdso = configuration.timeInGuest != false
        if vdso {
            try space.mapNew(GuestLayout.vdsoPage, length: PageSize.bytes, [.read, .execute])
            do { try space.hostWrite(VDSO.image, at: GuestLayout.vdsoPage) } catch {
                throw .invalidConfiguration("cannot write the vDSO: \(error)")
            }
            try space.mapNew(GuestLayout.vdsoDataPage, length: PageSize.bytes, [.read])
        }
        let stackPointer = try InitialStack.build(
            in: space, top: layout.stackTop, size: configuration.stackSize,
            arguments: configuration.arguments, environment: configuration.environment, image: image,
            vdso: vdso ? GuestLayout.vdsoPage : nil)
        try X86CPUState.installSystemTables(in: space)
        try space.mapNew(GuestLayout.mailboxPage, length: PageSize.bytes, [.read, .write])
        try space.mapOutsideMemory(GuestLayout.doorbellPage, [.read, .write])
        let builtins = BuiltinHostCalls(
            space: space, heapStart: image.program.imageEnd + layout.heapShift, mmapTop: image.mmapTop,
            outputs: [1: configuration.standardOutput, 2: configuration.standardError],
            outputLimit: configuration.outputLimit)
        builtins.addressSpaceLimit = configuration.addressSpaceLimit
        let linux = LinuxPersonality(space: space, builtins: builtins, fileSystem: fileSystem,
                                     configuration: configuration, image: image, stackBottom: stackBottom)
        let vm: VirtualMachine, vcpu: VirtualCPU
        do {
            (vm, vcpu) = try MicroVM.create(system: system, memory: memory, space: space,
                                            entry: image.entry, stackPointer: stackPointer,
                                            exceptionStubs: configuration.exceptionDelivery.usesStubs(on: system.platform),
                                            exitlessSyscalls: configuration.systemCallTransport != .exit)
        } catch {
            throw .kvm(error)
        }
        self.init(configuration: configuration, image: image, system: system, memory: memory, vm: vm, vcpu: vcpu,
                  space: space, builtins: builtins, linux: linux, stackBottom: stackBottom, fork: nil, phase: .notStarted)
        self.loadStarted = loadStarted
        self.hostProgramPath = hostPath
    }

    /// The guest's view of the files: the configuration's grants and, for a dynamic program
    /// (one with a loader), the system libraries (`SandboxConfiguration.systemLibraries`).
    static func fileSystem(for configuration: SandboxConfiguration, interpreter: String?, hostPath: String?) throws(SandboxError) -> FileSystemView {
        var grants = configuration.files
        if configuration.systemView { grants += SystemView.grants(existing: grants) }
        if let interpreter, configuration.systemLibraries {
            grants += SystemLibraries.grants(program: hostPath, guestPath: configuration.programPath ?? configuration.arguments.first,
                                             interpreter: interpreter, existing: grants)
        }
        return try FileSystemView(grants: grants)
    }

    /// A sandbox from its parts, assembled by a fresh load or by a fork.
    init(configuration: SandboxConfiguration, image: ProgramImage, system: KVMSystem, memory: GuestMemory,
         vm: VirtualMachine, vcpu: VirtualCPU, space: AddressSpace, builtins: BuiltinHostCalls, linux: LinuxPersonality,
         stackBottom: UInt64, fork: ForkState?, phase: Phase) {
        (self.configuration, self.image, self.system, self.memory) = (configuration, image, system, memory)
        (self.vm, self.vcpu, self.space, self.builtins, self.linux) = (vm, vcpu, space, builtins, linux)
        (self.stackBottom, self.fork, self.phase) = (stackBottom, fork, phase)
        guard let physical = space.tables.translateForHost(GuestLayout.mailboxPage, memory: memory) else {
            preconditionFailure("every VM maps the mailbox page")
        }
        mailboxPhysical = physical
        mailbox = Mailbox(memory: memory, physical: physical)
        // (A VM loaded without a vDSO, or from an older snapshot, has no data page: nothing to refresh.)
        clockPage = space.tables.translateForHost(GuestLayout.vdsoDataPage, memory: memory).map(GuestClockPage.init)
        builtins.interrupter = vcpu.interrupter
        linux.hostSignalsPending = { [hostSignals] in hostSignals.hasPending }
    }

    /// Where an initializing guest counts as ready for a snapshot.
    public enum ReadyPoint: Sendable {
        /// At `ks_ready()` (programs built with the SDK).
        case readyCall
        /// Just before its first read of standard input (unmodified programs: an interpreter
        /// that has imported its modules and now reads its request).
        case firstInputRead
        /// When it waits for a connection on its listening socket (`accept`, or `poll`/`epoll`
        /// over it) with none pending and none open (socket mode, which needs
        /// `SandboxConfiguration.acceptsConnections`): at start-up, the server that has set
        /// itself up; in a fork, the server that is done with the connections it was given.
        case connectionWait
        /// Whichever of `firstInputRead` and `connectionWait` comes first (`kvmsandbox serve`
        /// tells a filter from a server this way; `Snapshot.waitsForConnections` says which).
        case firstWait
    }

    /// The top of the anonymous-mmap region: below the stack's guard page and a gap.
    static func mmapTop(stackBottom: UInt64) -> UInt64 { stackBottom - PageSize.bytes - GuestLayout.stackGap }

    /// Whether CPU exceptions arrive through the host-built IDT stubs (hardware KVM) rather than
    /// as a shutdown exit (PVM).
    var usesExceptionStubs: Bool { configuration.exceptionDelivery.usesStubs(on: system.platform) }

    /// Registers `handler` for host-call `number` (at least `HostCallNumber.firstUserNumber`),
    /// replacing any earlier handler for it.
    public func register(_ number: Int, _ handler: @escaping HostCallHandler) throws(SandboxError) {
        guard number >= HostCallNumber.firstUserNumber else { throw .reservedHostCallNumber(number) }
        handlers[number] = handler
    }

    /// Lets `handler` see every CPU exception before it ends the run: it may change the registers
    /// (skip an instruction, emulate it, treat `int3` as a breakpoint) and resume the guest.
    /// Without a handler, or when it returns `.stop`, the exception ends the run as a `.fault`.
    public func onException(_ handler: @escaping ExceptionHandler) {
        exceptionHandler = handler
    }

    /// What the guest wrote to `fd` (1 or 2) when that stream was configured as `.capture`.
    public func capturedOutput(fd: Int32) -> [UInt8] { builtins.capturedOutput(fd: fd) }

    /// Forgets the captured output (a VM that serves one request after another without resets).
    /// It still counts against `outputLimit` until the next reset.
    public func discardCapturedOutput() { builtins.captured.clear() }

    /// Checked access to the guest's memory, as the guest sees it.
    public var guestMemory: GuestMemoryView { GuestMemoryView(space: space) }

    deinit {
        // The first process going away ends the others: their host threads hold their own VMs,
        // and nothing could reap them any more (a sandbox dropped while paused, or refused a
        // snapshot, with children running).
        linux.endProcesses()
    }

    /// Runs the guest until it exits, faults, breaks the ABI or times out (a fork: from where it
    /// is paused). Throws only for host-side failures (a KVM ioctl failing); guest behaviour is
    /// the outcome.
    /// A program that `execve`s goes on in the new image (`currentImage`); when this is the
    /// sandbox's first process, the processes it started are killed when it ends.
    public func run() throws(SandboxError) -> RunOutcome {
        let (current, outcome) = try runImages()
        if let table = current.linux.processes, current.linux.pid == 1 {
            current.linux.closeEverything()
            table.terminateAll()
        }
        return outcome
    }

    /// Runs the guest until it is ready (then the outcome is `.ready` and the sandbox is paused
    /// there, ready for `Snapshot(of:)`), or until it ends without being so. An SDK program is
    /// ready when it calls `ks_ready()`; an unmodified program (`.firstInputRead`) when it first
    /// reads its standard input, and is then paused just before that `read`, so that each fork
    /// reads its own input (`standardInput`).
    public func runUntilReady(at point: ReadyPoint = .readyCall) throws(SandboxError) -> RunOutcome {
        switch point {
        case .readyCall: return try runLoop(until: .ready)
        case .firstInputRead: return try runLoop(until: .inputRead)
        case .connectionWait: return try runLoop(until: .connectionWait)
        case .firstWait: return try runLoop(until: .firstWait)
        }
    }

    /// Runs the guest until it has read all of `standardInput` and reads it again (then the
    /// outcome is `.ready` and the guest is paused just before that read), or until it ends,
    /// faults or times out. One turn of an interactive program: set `standardInput` to the next
    /// request, run to here, read its answer with `capturedOutput(fd:)` and `startTurn()`, and
    /// repeat in the same VM, its state kept between turns (`kvmsandbox mcp`'s Python sessions).
    /// Standard input from a host descriptor never runs out: such a run only ends.
    public func runUntilInputNeeded() throws(SandboxError) -> RunOutcome {
        try runLoop(until: .inputExhausted)
    }

    /// Starts a new turn of an interactive program: forgets the captured output and gives the
    /// guest its whole `outputLimit` again, so the limit bounds each turn rather than the VM's
    /// life. (`discardCapturedOutput()` forgets the bytes but keeps counting them.)
    public func startTurn() {
        builtins.captured.clear()
        builtins.state.outputWritten = 0
    }

    /// Hands the guest a connection the embedder accepted (socket mode): its next `accept` on
    /// its listening socket returns a descriptor for it, and `poll`/`epoll` see the listening
    /// socket readable until then. The sandbox owns `descriptor` from now on (made
    /// non-blocking, closed when the guest closes it, at a reset, or when the sandbox goes).
    public func offerConnection(_ descriptor: Int32) {
        let flags = fcntl(descriptor, F_GETFL)
        if flags >= 0 { _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) }
        linux.state.pendingConnections.append(HostFile(fd: descriptor))
        linux.wakeReaders()
    }

    /// Whether the guest listens on a socket (socket mode): true after a run that stopped at
    /// `.connectionWait`.
    public var listens: Bool { linux.listens }

    /// Where the guest reads fd 0 from: a fork's own request, set before `run()`. Rewinds it.
    public var standardInput: InputSource {
        get { linux.input }
        set {
            linux.input = newValue
            linux.state.inputOffset = 0
        }
    }
}
