import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A sandbox that was handed to another host thread and is used only there from then on.
///
/// (@unchecked: the sending thread never touches the sandbox again after handing it over.)
private struct HandedOver: @unchecked Sendable {
    let sandbox: Sandbox
}

/// Processes: each is a micro-VM of its own on a host thread of its own. `fork` copies this VM
/// (the memory in use, the vCPU, the Linux state with the same pipes); `execve` loads a new
/// program into a fresh VM that takes over the process (descriptors, working directory,
/// ignored signals, pid); the sandbox's first process is pid 1, and when it ends the others are
/// killed. Processes share pipes (`Pipe`); the in-memory directories and other open files are
/// each process's own copy.
/// What the processes of one run did together (`Sandbox.processStatistics`).
public struct ProcessStatistics: Sendable, Equatable {
    /// Processes started, the first one included.
    public var processes: Int
    /// Programs `execve` loaded (each a fresh VM).
    public var images: Int
    /// VM exits of every image of every process.
    public var exits: Int
}

extension Sandbox {
    /// The image running this sandbox's program now: itself, or the program its last `execve`
    /// loaded (what a report after `run()` should describe).
    public var currentImage: Sandbox { execChain ?? self }

    /// Carries out a `fork` or an `execve`; nil to go on running, or the outcome (an exec ends
    /// this image's run: `run()` goes on with `replacement`).
    func perform(_ request: ProcessRequest) throws(KVMError) -> RunOutcome? {
        switch request {
        case .fork(let fork):
            let result = forkChild(fork)
            vcpu.modifyRegisters { $0.callResult = UInt64(bitPattern: result) }
            return nil
        case .exec(let exec):
            switch loadImage(exec) {
            case .failure(let error):
                vcpu.modifyRegisters { $0.callResult = UInt64(bitPattern: -Int64(error.rawValue)) }
                return nil
            case .success(let image):
                replacement = image
                return .exited(status: 0)  // this image is done; `run()` runs the replacement
            }
        }
    }

    /// The sandbox's process table, made (with this sandbox as pid 1) at its first fork.
    private func processTable() -> ProcessTable {
        if let table = linux.processes { return table }
        let deadline = runEnds
        let table = ProcessTable(first: hostSignals, arguments: configuration.arguments,
                                 limit: configuration.maximumProcesses, deadline: deadline)
        linux.processes = table
        // Children signal this process through its host signals from now on.
        if !hostSignalsTaken {
            hostSignalsTaken = true
            _ = VCPUInterrupter.unblockSignalOnThisThread()
            hostSignals.setRunningThread(pthread_self())
        }
        return table
    }

    /// A child process: the pid for the parent, or `-errno`.
    private func forkChild(_ request: ForkRequest) -> Int64 {
        let table = processTable()
        guard let pid = table.add(childOf: linux.pid, arguments: table.arguments(of: linux.pid) ?? configuration.arguments) else {
            return -Int64(Errno.resourceTemporarilyUnavailable.rawValue)
        }
        let child: Sandbox
        do {
            child = try copyAsChild(pid: pid, request, table: table)
        } catch {
            table.remove(pid)
            return -Int64(Errno.noMemory.rawValue)
        }
        if request.flags & LinuxPersonality.cloneParentSetTID != 0 {
            try? guestMemory.store(UInt32(bitPattern: pid), at: request.parentTID)
        }
        let handed = HandedOver(sandbox: child)
        guard table.start({ handed.sandbox.runAsChild() }) else {
            child.linux.closeEverything()
            table.remove(pid)
            return -Int64(Errno.resourceTemporarilyUnavailable.rawValue)
        }
        if request.waitsForChild {
            // vfork: the parent resumes once the child has exec'd or ended (or the run must stop).
            while !table.waitReleased(pid, milliseconds: Int(OutputWriter.pollSlice)) {
                if vcpu.interrupter.isInterrupted { break }
            }
        }
        return Int64(pid)
    }

    /// This VM copied as process `pid`: the memory in use, every vCPU register (rax 0: the
    /// child's return from the call; its own stack and TLS if asked), the calling thread only,
    /// the same open pipes.
    private func copyAsChild(pid: Int32, _ request: ForkRequest, table: ProcessTable) throws -> Sandbox {
        var registers = registersAfterHostCall(vcpu.registers)
        registers.callResult = 0
        if request.stack != 0 { registers.stackPointer = request.stack }
        var state = try vcpu.saveState(capabilities: system.stateCapabilities)
        state.generalRegisters = registers
        if let tls = request.tls { state.specialRegisters.fs.base = tls }
        let memory = try GuestMemory(copyingPrefixOf: self.memory, count: space.allocatorState.next)
        // Shared memory stays shared: the same objects at the same guest-physical pages.
        for overlay in self.memory.overlays {
            if let error = memory.overlay(overlay.physical, count: overlay.count, with: overlay.object, at: overlay.offset) { throw error }
        }
        let space = AddressSpace(memory: memory, tablesRoot: self.space.tables.root, allocator: self.space.allocatorState)
        let builtins = BuiltinHostCalls(
            space: space, heapStart: image.program.imageEnd, mmapTop: image.mmapTop,
            outputs: [1: configuration.standardOutput, 2: configuration.standardError], outputLimit: configuration.outputLimit)
        builtins.addressSpaceLimit = configuration.addressSpaceLimit
        builtins.state = self.builtins.state
        builtins.captured = self.builtins.captured
        let linux = LinuxPersonality(space: space, builtins: builtins, fileSystem: self.linux.fileSystem,
                                     configuration: configuration, image: image, stackBottom: stackBottom)
        self.linux.state.files.shareOffsets()  // parent and child move the same offsets from now on
        var linuxState = self.linux.state
        var thread = GuestThread(tid: 1)
        let calling = self.linux.currentThread
        thread.signalMask = calling.signalMask
        thread.alternateStack = calling.alternateStack
        if request.flags & LinuxPersonality.cloneChildClearTID != 0 { thread.clearChildTID = request.childTID }
        linuxState.threads = [thread]
        linuxState.currentThread = 0
        linuxState.alarmDeadline = nil  // timers are not inherited
        for (id, hold) in linuxState.pipeHolds {
            if hold.reader { linuxState.pipes[id]?.adjust(reader: true, by: 1) }
            if hold.writer { linuxState.pipes[id]?.adjust(reader: false, by: 1) }
        }
        linux.state = linuxState
        linux.input = self.linux.input
        linux.pid = pid
        linux.processes = table
        let (vm, vcpu) = try MicroVM.create(system: system, memory: memory, dirtyTracking: nil, exceptionStubs: usesExceptionStubs,
                                            specialRegisters: { _ in state.specialRegisters }, registers: registers)
        try vcpu.restoreState(state)
        let child = Sandbox(configuration: configuration, image: image, system: system, memory: memory, vm: vm, vcpu: vcpu,
                            space: space, builtins: builtins, linux: linux, stackBottom: stackBottom, fork: nil, phase: .paused(registers))
        child.hostProgramPath = hostProgramPath
        child.timeout = table.remainingTimeout
        child.hostSignalsTaken = true
        if request.flags & LinuxPersonality.cloneChildSetTID != 0 {
            try? child.guestMemory.store(UInt32(bitPattern: pid), at: request.childTID)
        }
        table.running(pid, signals: child.hostSignals)
        return child
    }

    /// A child process's life, on its own host thread: its image and whatever it execs, run
    /// to the end; then its descriptors are closed and its parent told.
    fileprivate func runAsChild() {
        let outcome: RunOutcome
        do { outcome = try runImages().outcome } catch { outcome = .hostFailure("\(error)") }
        let image = currentImage
        image.linux.closeEverything()
        if let table = image.linux.processes {
            switch outcome {
            case .exited, .signaled: break
            default:
                let name = table.arguments(of: image.linux.pid)?.first ?? "?"
                let line = "kvmsandbox: process \(image.linux.pid) (\(name)): \(outcome)\n"
                _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
            }
            table.account(images: image.earlierImages.count, exits: image.earlierImages.exits + image.statistics.exits)
            table.ended(image.linux.pid, status: Self.waitStatus(outcome))
            table.threadFinished()
        }
    }

    /// Runs this image, then each image an `execve` replaced it with, to the end: the last
    /// image (`currentImage`) and how it ended.
    func runImages() throws(SandboxError) -> (image: Sandbox, outcome: RunOutcome) {
        var current = self
        var outcome = try runLoop(until: .end)
        while let next = current.replacement {
            current.replacement = nil
            execChain = next
            current = next
            outcome = try next.runLoop(until: .end)
        }
        return (current, outcome)
    }

    /// What every process of this run did: processes started (this one included), images
    /// `execve` loaded, and VM exits of all of them together (this process's current image
    /// included). A run that never forked: one process, its own exits.
    public var processStatistics: ProcessStatistics {
        let image = currentImage
        let own = image.earlierImages.exits + image.statistics.exits
        let others = image.linux.processes?.totals ?? (processes: 1, images: 0, exits: 0)
        return ProcessStatistics(processes: others.processes, images: others.images + image.earlierImages.count,
                                 exits: others.exits + own)
    }

    /// The status `wait` reports for a process that ended this way: an exit code in bits 8-15,
    /// or the terminating signal in bits 0-6 (a timeout or a host failure: SIGKILL).
    static func waitStatus(_ outcome: RunOutcome) -> Int32 {
        switch outcome {
        case .exited(let status): return (status & 0xff) << 8
        case .signaled(let signal): return (1...64).contains(signal) ? signal & 0x7f : 9
        case .fault(let fault): return X86Exception.signal(fault.vector) & 0x7f
        default: return 9
        }
    }

    /// The program `request` names, loaded into a fresh VM that takes over this process.
    /// Errors are the ones `execve` returns (the caller's image goes on).
    private func loadImage(_ request: ExecRequest) -> Result<Sandbox, Errno> {
        var path = request.path, arguments = request.arguments
        for _ in 0...ScriptLine.nestingLimit {
            let bytes: [UInt8]
            switch readExecutable(path) {
            case .failure(let error): return .failure(error)
            case .success(let found): bytes = found
            }
            if let line = ScriptLine(bytes) {
                // The kernel's argv: interpreter, its optional argument, the script as named, the rest.
                arguments = [line.interpreter] + (line.argument.map { [$0] } ?? []) + [path] + arguments.dropFirst()
                path = line.interpreter
                continue
            }
            let elf: ELFFile
            do { elf = try ELFFile(bytes: bytes) } catch { return .failure(.execFormatError) }
            var configuration = self.configuration
            configuration.arguments = arguments.isEmpty ? [path] : arguments
            configuration.environment = request.environment
            configuration.programPath = path
            configuration.timeout = nil
            let image: Sandbox
            do {
                image = try Sandbox(elf: elf, hostPath: nil, configuration: configuration, system: system)
            } catch {
                switch error {
                case .invalidELF: return .failure(.execFormatError)
                case .outOfGuestMemory: return .failure(.noMemory)
                default: return .failure(.permissionDenied)
                }
            }
            adopt(into: image, arguments: configuration.arguments)
            return .success(image)
        }
        return .failure(.tooManySymbolicLinkLevels)  // ELOOP: too many nested interpreters
    }

    /// The bytes of the file `execve` may run at guest path `path`: a regular file through a
    /// grant, not from a writable one unless `executesWritableFiles`, never an in-memory file.
    private func readExecutable(_ path: String) -> Result<[UInt8], Errno> {
        if linux.state.memoryFiles.covers(path) {
            return linux.state.memoryFiles.contents(path) == nil ? .failure(.noSuchFileOrDirectory) : .failure(.permissionDenied)
        }
        switch linux.fileSystem.resolve(path, flags: O_RDONLY, mode: 0, forChange: false) {
        case .failure(let error): return .failure(error)
        case .success(let resolved):
            defer { close(resolved.fd) }
            if resolved.mount.writable && !configuration.executesWritableFiles { return .failure(.permissionDenied) }
            var status = stat()
            guard fstat(resolved.fd, &status) == 0 else { return .failure(.permissionDenied) }
            guard status.st_mode & S_IFMT == S_IFREG, status.st_mode & 0o111 != 0 else { return .failure(.permissionDenied) }
            do { return .success(try readFile(descriptor: resolved.fd)) } catch { return .failure(.permissionDenied) }
        }
    }

    /// What an `execve` keeps, moved from this image to `image`: the descriptors (less the
    /// close-on-exec ones), working directory, umask, ignored signals (handled ones go back to
    /// their default), the signal mask, pending alarm, in-memory files, pid and parent.
    private func adopt(into image: Sandbox, arguments: [String]) {
        let old = linux.state
        var new = image.linux.state
        new.files = old.files
        new.files.closeOnExec()
        (new.cwd, new.umask, new.memoryFiles) = (old.cwd, old.umask, old.memoryFiles)
        new.signalActions = old.signalActions.filter { SignalAction(bytes: $0.value).handler == SignalAction.ignore }
        (new.pipes, new.pipeHolds, new.nextPipe) = (old.pipes, old.pipeHolds, old.nextPipe)
        (new.epolls, new.eventCounters, new.sockets) = (old.epolls, old.eventCounters, old.sockets)
        (new.pendingConnections, new.nextObject, new.inputOffset) = (old.pendingConnections, old.nextObject, old.inputOffset)
        (new.alarmDeadline, new.alarmInterval, new.cpuNanoseconds) = (old.alarmDeadline, old.alarmInterval, old.cpuNanoseconds)
        new.threads[0].signalMask = linux.currentThread.signalMask
        new.threads[0].pendingSignals = linux.currentThread.pendingSignals
        let name = Array((arguments.first.map { FileSystemView.lastComponent(of: $0) } ?? "").utf8.prefix(15))
        new.threadName = name + [UInt8](repeating: 0, count: 16 - name.count)
        image.linux.state = new
        image.linux.input = linux.input
        image.linux.pid = linux.pid
        image.linux.processes = linux.processes
        image.linux.diskBytesAdded = linux.diskBytesAdded
        image.builtins.state.outputWritten = builtins.state.outputWritten
        image.builtins.captured = builtins.captured
        image.earlierImages = (earlierImages.count + 1, earlierImages.exits + statistics.exits)
        // This image gives up what moved (the counts in the pipes move with it).
        linux.state.files = FileTable()
        linux.state.pipes = [:]
        linux.state.pipeHolds = [:]
        image.linux.syncPipeEnds()
        image.timeout = linux.processes?.remainingTimeout ?? remainingTimeout
        image.hostSignalsTaken = hostSignalsTaken || linux.processes != nil
        if hostSignalsTaken { hostSignals.hand(to: image.hostSignals) }  // `run`'s forwarding follows the exec
        image.hostProgramPath = nil
        linux.processes?.running(linux.pid, signals: image.hostSignals, arguments: arguments, exec: true)
        linux.processes = nil  // the new image is the process now: this one must not end the others when it goes
    }

    /// Seconds left of this run's deadline (nil: none).
    private var remainingTimeout: Double? {
        runEnds.map { max(Double(Int64(bitPattern: $0 &- monotonicNanoseconds())) / 1e9, 1e-9) }
    }
}
