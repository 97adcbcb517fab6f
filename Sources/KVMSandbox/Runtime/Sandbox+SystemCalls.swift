#if canImport(Glibc)
import Glibc
#endif

/// Either of two things (a host call's result or the outcome that ends the run).
enum Either<Left, Right> {
    case left(Left)
    case right(Right)
}

/// The `syscall` trap: Linux system calls, served by the Linux personality.
extension Sandbox {
    /// Linux system calls the guest made so far, by name, and how often.
    public var systemCallCounts: [String: Int] {
        Dictionary(linux.counts.map { (LinuxPersonality.systemCalls.name($0.key), $0.value) }, uniquingKeysWith: +)
    }

    /// The system calls served without a VM exit (by the polling thread, from the exitless
    /// `syscall` stub), by name; they are in `systemCallCounts` too.
    public var exitlessSystemCallCounts: [String: Int] {
        Dictionary(linux.exitlessCounts.map { (LinuxPersonality.systemCalls.name($0.key), $0.value) }, uniquingKeysWith: +)
    }

    /// Paths the guest looked for that exist on the host but lie outside its grants (at most
    /// `deniedPathsKept`, the first ones): what a `--ro` would have shown it.
    public var deniedHostPaths: [String] { linux.deniedHostPaths }

    /// The most denied paths kept.
    public static let deniedPathsKept = 16

    /// How often the guest was refused memory because its `memorySize` was used up (its `mmap`
    /// or `brk` then failed with ENOMEM): a failing program with a count here needs more memory.
    public var memoryLimitHits: Int { space.memoryRefusals }

    /// Bytes of host memory the Linux layer holds for the guest now, and its budget
    /// (`SandboxConfiguration.hostMemoryLimit`).
    public var hostMemory: (inUse: Int, limit: Int) { (linux.hostBytesInUse, linux.hostMemoryLimit) }

    /// The guest's current directory (where it starts, before it runs: `--cwd`, else the
    /// host's current directory when a grant shows it, else `/`).
    public var workingDirectory: String { linux.state.cwd }

    /// Whether `path` is a directory the guest can see as it starts (a grant, a directory in
    /// one or on the way to one, a tmpfs): what a working directory must be.
    public func guestDirectoryExists(_ path: String) -> Bool { linux.guestDirectoryExists(path) }

    /// Bytes of guest memory in use: the high-water mark of the guest-physical pages handed out
    /// (they are never given back while the VM lives, so this is also the peak), of
    /// `SandboxConfiguration.memorySize`.
    public var guestMemoryUsed: UInt64 { space.allocatorState.next }

    /// Bytes the guest added to the host's disk under its writable grants, and its quota
    /// (`SandboxConfiguration.diskQuota`; nil: none, and then nothing is counted).
    public var diskUsage: (added: Int, quota: Int?) { (linux.diskBytesAdded, linux.diskQuota) }

    /// The system calls answered `ENOSYS` because the Linux layer does not implement them, by name.
    public var unimplementedSystemCalls: [String: Int] {
        Dictionary(linux.unimplemented.map { (LinuxPersonality.systemCalls.name($0.key), $0.value) }, uniquingKeysWith: +)
    }

    /// How many requests for writable-and-executable (or executable anonymous) memory were
    /// refused with `EACCES` because `SandboxConfiguration.allowJIT` is off.
    public var refusedExecutableMappings: Int { linux.refusedExecutable }

    /// Whether an exit at `rip` came from the `syscall` entry (PVM: the user stub; hardware KVM:
    /// the CPL 0 entry) rather than from the guest's own `out` (a host call).
    func isSyscallTrap(_ rip: UInt64) -> Bool {
        (rip >= GuestLayout.syscallStubPage && rip < GuestLayout.syscallStubPage + 16)
            || (isInSyscallEntry(rip) && !X86CPUState.isInExitlessEntry(rip))
    }

    /// Serves the Linux system call in `registers`; embedder host calls are not reachable this way.
    func serveSystemCall(_ registers: GuestRegisters) throws(KVMError) -> RunOutcome? {
        let call = HostCall(number: registers.callNumber,
                            arguments: registers.callArguments,
                            memory: guestMemory)
        // A system call by exit where the guest could have posted it: the poller is asleep (or
        // suspended); wake it for the next ones.
        if postsSystemCalls, let exitless { MailboxPoller.shared.noteExitCall(from: exitless) }
        if currentStop.stopsAtInputRead || (currentStop == .inputExhausted && linux.inputExhausted),
           linux.readsStandardInput(call), try pauseBeforeSystemCall(registers) {
            return .ready
        }
        var threadAction: ThreadAction?
        var processRequest: ProcessRequest?
        let effect = try guestResult(of: call) { () throws -> Either<Int64, RunOutcome> in
            // Built-ins write guest memory too: never alongside a poller-served handler.
            let effect = if let exitless { try exitless.exclusively { try linux.handle(call) } } else { try linux.handle(call) }
            if case .thread(let action) = effect {
                threadAction = action
                try invalidateReducedPages()
                return .left(0)
            }
            if case .process(let request) = effect {
                processRequest = request
                try invalidateReducedPages()
                return .left(0)
            }
            return try apply(effect)
        }
        if threadAction == .block, currentStop.stopsAtConnectionWait, linux.waitsForConnection(call),
           try pauseBeforeSystemCall(registers) {
            // The server waits for its next connection: stop there instead (the call runs
            // again when the guest resumes, with the connection offered by then).
            linux.cancelWait()
            return .ready
        }
        if let threadAction {
            if configuration.traceSyscalls { trace(call, result: threadAction.traced, outcome: nil) }
            return try perform(threadAction)
        }
        if let processRequest {
            let outcome = try perform(processRequest)
            if configuration.traceSyscalls {
                trace(call, result: outcome == nil ? LinuxTraceFormat.describe(result: Int64(bitPattern: vcpu.registers.callResult)) : "0 (exec)", outcome: nil)
            }
            return outcome
        }
        let result: Int64
        switch effect {
        case .left(let value): result = value
        case .right(let outcome):
            if configuration.traceSyscalls { trace(call, result: "?", outcome: outcome) }
            return outcome
        }
        if configuration.traceSyscalls { trace(call, result: LinuxTraceFormat.describe(result: result), outcome: nil) }
        vcpu.modifyRegisters { $0.callResult = UInt64(bitPattern: result) }
        return nil
    }

    /// Puts the vCPU back on the guest's `syscall` instruction (RIP from RCX, flags from R11, user
    /// segments when the entry ran at CPL 0), so that resuming makes the same call again. False
    /// when RCX does not follow a `syscall` instruction (then the call is served as usual).
    func pauseBeforeSystemCall(_ registers: GuestRegisters) throws(KVMError) -> Bool {
        guard let address = registers.systemCallAddress,
              let bytes = try? guestMemory.read(address, count: GuestRegisters.systemCallInstruction.count),
              bytes == GuestRegisters.systemCallInstruction else {
            return false
        }
        if isInSyscallEntry(registers.instructionPointer) {
            try vcpu.setSpecialRegisters(X86CPUState.userMode(try vcpu.specialRegisters()))
        }
        vcpu.modifyRegisters { $0 = registers.restartingSystemCall }
        return true
    }

    /// Runs a call's `body` and turns its errors into the guest's result: a `KVMError` is a host
    /// failure (rethrown), a guest error is `-errno`, anything else ends the run as `.hostCallFailed`.
    func guestResult(of call: HostCall, _ body: () throws -> Either<Int64, RunOutcome>) throws(KVMError) -> Either<Int64, RunOutcome> {
        do {
            return try body()
        } catch let error as KVMError {
            throw error
        } catch {
            guard let value = HostCallErrno.result(for: error) else {
                return .right(.hostCallFailed(number: call.number, message: "\(error)"))
            }
            return .left(value)
        }
    }

    /// Carries out a built-in or Linux call's effect: the value for `rax`, or the run's end.
    func apply(_ effect: HostCallEffect) throws -> Either<Int64, RunOutcome> {
        // Whatever the call returns: pages that lost permissions lose their cached translations
        // before the guest runs again.
        try invalidateReducedPages()
        switch effect {
        case .value(let value): return .left(value)
        case .exit(let status): return .right(.exited(status: status))
        case .signal(let signal): return .right(.signaled(signal: signal))
        case .notBuiltin: return .left(-Int64(HostCallErrno.ENOSYS))
        case .setFSBase(let base):
            var sregs = try vcpu.specialRegisters()
            sregs.fs.base = base
            try vcpu.setSpecialRegisters(sregs)
            builtins.setFSBase(base)
            return .left(0)
        case .thread, .process:
            return .left(-Int64(HostCallErrno.ENOSYS))  // served by `serveSystemCall`, never reaches here
        }
    }

    /// Makes KVM forget the translations of pages whose permissions were reduced since the
    /// last call (`AddressSpace.takeReducedPages`): only those pages (the MMU notifier), or,
    /// should that fail, everything (the memslot re-created).
    func invalidateReducedPages() throws(KVMError) {
        let reduced = space.takeReducedPages()
        guard !reduced.isEmpty else { return }
        let start = monotonicNanoseconds()
        if !memory.invalidateTranslations(ofPages: reduced) { try dropCachedTranslations() }
        statistics.translationFlushes += 1
        statistics.translationFlushNanoseconds += monotonicNanoseconds() &- start
    }

    /// Makes KVM forget every translation it cached from the guest's page tables (PVM's shadow
    /// MMU does not see the host's writes to them): the memslot is deleted and re-created.
    func dropCachedTranslations() throws(KVMError) {
        // Deleting the slot drops its dirty log: keep what it says for the next reset first.
        if let fork {
            switch fork.tracking {
            case .ring: try harvestDirtyRing()
            case .bitmap, .hotPages:
                try vm.fetchDirtyLog(slot: 0, into: &fork.dirtyBitmap)
                fork.forEachDirtyPage { fork.harvested.append($0) }
            }
        }
        try recreateMemorySlot()
    }

    /// Deletes and re-creates the memslot, which makes KVM zap every cached translation (a
    /// fork's slot keeps dirty logging on).
    func recreateMemorySlot() throws(KVMError) {
        try vm.setMemoryRegion(slot: 0, guestPhysicalAddress: 0, size: 0, hostAddress: memory.hostAddress)
        try vm.setMemoryRegion(slot: 0, guestPhysicalAddress: 0, size: memory.size, hostAddress: memory.hostAddress,
                               flags: fork == nil ? 0 : VirtualMachine.logDirtyPages)
    }

    /// One strace-style line on the host's stderr.
    func trace(_ call: HostCall, result: String, outcome: RunOutcome?) {
        Self.trace(call, result: result, outcome: outcome, exitless: false, pid: linux.processes == nil ? nil : linux.pid,
                   thread: linux.state.threads.count > 1 ? linux.publicThreadID(linux.currentThread.tid) : nil,
                   to: configuration.traceDescriptor ?? 2)
    }

    /// One strace-style line on `descriptor` (the host's stderr unless `--trace-output`), written
    /// with one `write` so lines of several threads never interleave; `exitless`: served by the
    /// polling thread; `pid`: the process, once the program has started others (as `strace -f` prefixes).
    /// `thread`: the calling thread's id, once the process has several (`[tid N]`).
    static func trace(_ call: HostCall, result: String, outcome: RunOutcome?, exitless: Bool, pid: Int32? = nil, thread: Int32? = nil,
                      to descriptor: Int32) {
        var line = pid.map { "[pid \($0)] " } ?? ""
        if let thread { line += "[tid \(thread)] " }
        line += "[syscall\(exitless ? " exitless" : "")] \(LinuxPersonality.systemCalls.name(call.number))("
        line += zip(call.arguments, LinuxPersonality.systemCalls.argumentKinds(call.number))
            .map { LinuxTraceFormat.argument($0, kind: $1, memory: call.memory) }.joined(separator: ", ")
        line += ") = " + (outcome.map { "\($0)" } ?? result) + "\n"
        _ = line.withCString { Glibc.write(descriptor, $0, strlen($0)) }
    }
}
