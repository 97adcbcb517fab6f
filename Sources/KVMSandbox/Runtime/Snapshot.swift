
/// A frozen, initialized guest: its memory (in a memfd of its own) and its vCPU state, paused at
/// `ks_ready()`. Forks are new VMs over a copy-on-write mapping of that memfd, so they share every
/// page they do not write; a fork's `reset()` copies back only the pages it dirtied.
///
/// ```swift
/// let snapshot = try Snapshot(elfPath: "service.elf")      // runs main() up to ks_ready()
/// let vm = try snapshot.fork()
/// let result = try vm.call("handle", .bytes(request), .integer(UInt64(request.count)))
/// try vm.reset()                                             // back to the snapshot, for the next request
/// ```
/// Immutable once made, so any number of threads may fork it at once.
///
/// (@unchecked: immutable once made; its memory image is a read-only mapping forks copy on write.)
public final class Snapshot: @unchecked Sendable {
    /// The configuration of the sandbox it was taken from (forks use the same limits).
    public let configuration: SandboxConfiguration
    /// Whether the program was snapshotted waiting for a connection (socket mode) rather than
    /// at `ks_ready()` or a read of standard input.
    public var waitsForConnections: Bool { linux.sockets.values.contains(where: \.listening) }
    /// The loaded program (symbols for calls and fault reports).
    public var program: LoadedProgram { image.program }
    /// The program, its loader and the mmap region's top.
    let image: ProgramImage
    /// Guest-memory pages in use at the snapshot (image, tables, stack, heap): what a fork shares.
    public let usedBytes: UInt64
    let system: KVMSystem
    let memory: GuestMemory
    /// The whole vCPU: registers, segments, events, x87/SSE/AVX state, XCRs, debug registers, MSRs.
    let vcpuState: VCPUState
    var registers: GuestRegisters { vcpuState.generalRegisters }
    var specialRegisters: SpecialRegisters { vcpuState.specialRegisters }
    var events: ExceptionEvents { vcpuState.events }
    let tablesRoot: UInt64
    let allocator: PhysicalPageAllocator
    let builtins: BuiltinHostCalls.State
    /// The Linux personality's state (fd table, cwd, signal actions) and its view of the files.
    let linux: LinuxPersonality.State
    let fileSystem: FileSystemView
    let stackBottom: UInt64
    /// The host-call handlers registered on the sandbox it was taken from: every fork starts
    /// with them (a pool's set-up, or `register` on the fork, may replace them). Empty for a
    /// snapshot read from a file: closures are not written to disk; register them on the forks.
    public let handlers: [Int: HostCallHandler]
    /// The host file the program was loaded from (what a snapshot file names).
    let hostProgramPath: String?
    /// For a parked snapshot (`parked(_:)`): its arena and parking page.
    let parking: ParkingLayout?
    /// Whether forks of this snapshot can be parked VMs (`ParkedSandbox`).
    public var isParked: Bool { parking != nil }

    /// Loads the ELF at `elfPath`, runs it until it is ready (`ks_ready()`, or for an unmodified
    /// program its first read of standard input), and snapshots it there. `setUp` registers the
    /// host calls its initialization needs; the snapshot keeps them, so every fork has them too.
    /// Throws `.notReady` with the outcome when the guest
    /// ends (exits, faults, times out) before it is ready.
    public convenience init(elfPath: String, configuration: SandboxConfiguration = .init(), system: KVMSystem? = nil,
                            readyAt point: Sandbox.ReadyPoint = .readyCall,
                            setUp: (Sandbox) throws -> Void = { _ in }) throws {
        let sandbox = try Sandbox(elfPath: elfPath, configuration: configuration, system: system)
        try setUp(sandbox)
        let outcome = try sandbox.runUntilReady(at: point)
        guard outcome == .ready else { throw SandboxError.notReady(outcome) }
        try self.init(of: sandbox)
    }

    /// Snapshots `sandbox`, which must be paused (at `ks_ready()`, or after a guest function call).
    /// The sandbox itself is unchanged and may go on running.
    public init(of sandbox: Sandbox) throws(SandboxError) {
        guard case .paused(let registers) = sandbox.phase else { throw .notPaused }
        if let processes = sandbox.linux.processes, processes.pids.count > 1 { throw .severalProcesses(processes.pids.count) }
        configuration = sandbox.configuration
        image = sandbox.image
        system = sandbox.system
        var state: VCPUState
        do { state = try sandbox.vcpu.saveState(capabilities: sandbox.system.stateCapabilities) } catch { throw .kvm(error) }
        state.generalRegisters = registers
        vcpuState = state
        tablesRoot = sandbox.space.tables.root
        allocator = sandbox.space.allocatorState
        builtins = sandbox.builtins.state
        linux = sandbox.linux.state.detached()
        fileSystem = sandbox.linux.fileSystem
        stackBottom = sandbox.stackBottom
        hostProgramPath = sandbox.hostProgramPath
        parking = sandbox.parkingLayout
        handlers = sandbox.handlers
        usedBytes = allocator.next
        // Everything above the allocator's high-water mark is still zero: copy only what is used.
        memory = try GuestMemory(size: sandbox.memory.size)
        memory.copyPrefix(of: sandbox.memory, count: usedBytes)
    }

    /// A snapshot from its parts (read from a snapshot file).
    init(configuration: SandboxConfiguration, image: ProgramImage, usedBytes: UInt64, system: KVMSystem, memory: GuestMemory,
         vcpuState: VCPUState, tablesRoot: UInt64, allocator: PhysicalPageAllocator, builtins: BuiltinHostCalls.State,
         linux: LinuxPersonality.State, fileSystem: FileSystemView, stackBottom: UInt64, hostProgramPath: String?) {
        (self.configuration, self.image, self.usedBytes, self.system, self.memory) = (configuration, image, usedBytes, system, memory)
        (self.vcpuState, self.tablesRoot, self.allocator, self.builtins) = (vcpuState, tablesRoot, allocator, builtins)
        (self.linux, self.fileSystem, self.stackBottom, self.hostProgramPath) = (linux, fileSystem, stackBottom, hostProgramPath)
        parking = nil
        handlers = [:]
    }

    /// A snapshot for parked VMs (`ParkedSandbox`), derived from this one: the same memory and
    /// state, plus a request arena of `parking.arenaSize` bytes and a parking page, with every
    /// other page read-only for the guest and the vCPU in the host's idle stub. Costs a fork
    /// and a copy of the pages in use. This snapshot must be single-threaded and not parked.
    public func parked(_ parking: ParkingConfiguration = .init()) throws(SandboxError) -> Snapshot {
        let template = try fork()
        try template.prepareParking(parking)
        return try Snapshot(of: template)
    }

    /// A new VM from this snapshot, paused where the snapshot was taken. Costs a VM and vCPU
    /// creation and a `MAP_PRIVATE` mapping; no guest memory is copied.
    public func fork(tracking: DirtyTracking? = nil) throws(SandboxError) -> Sandbox {
        try Sandbox(forking: self, tracking: tracking)
    }
}

/// What a fork needs to go back to its snapshot.
final class ForkState {
    let snapshot: Snapshot
    let tracking: DirtyTracking
    /// KVM's dirty bitmap for the memslot, reused across resets (bitmap tracking).
    var dirtyBitmap: [UInt64]
    /// Pages harvested from a full dirty ring during a run, restored at the next reset.
    var harvested: [UInt64] = []
    /// `.hotPages`: resets in a row each page was dirty in (saturating), and resets since the
    /// last cooling; the pages to protect again at this reset (reused).
    var streaks: [UInt8] = []
    var streakPages: [Int] = []
    var resetsSinceCooling = 0
    var clearMask: [UInt64] = []

    /// Calls `body` with every page set in `dirtyBitmap` (guest-physical page numbers).
    func forEachDirtyPage(_ body: (UInt64) -> Void) {
        dirtyBitmap.withUnsafeBufferPointer { words in
            for word in words.indices where words[word] != 0 {
                var bits = words[word]
                while bits != 0 {
                    body(UInt64(word * 64 + bits.trailingZeroBitCount))
                    bits &= bits - 1
                }
            }
        }
    }

    init(snapshot: Snapshot, tracking: DirtyTracking) {
        self.snapshot = snapshot
        self.tracking = tracking
        let words = Int((snapshot.memory.size / PageSize.bytes + 63) / 64)
        dirtyBitmap = tracking == .ring ? [] : [UInt64](repeating: 0, count: words)
        if tracking == .hotPages {
            streaks = [UInt8](repeating: 0, count: Int(snapshot.memory.size / PageSize.bytes))
            clearMask = [UInt64](repeating: 0, count: words)
        }
    }
}

extension Sandbox {
    /// A fork of `snapshot`: a new VM over a copy-on-write view of its memory, with KVM's dirty log
    /// tracking on (`tracking`, or the faster one this KVM has), paused where the snapshot was
    /// taken. Same as `snapshot.fork()`.
    public convenience init(forking snapshot: Snapshot, tracking: DirtyTracking? = nil) throws(SandboxError) {
        let tracking = tracking ?? DirtyTracking.preferred(on: snapshot.system)
        let memory = try GuestMemory(copyOnWriteOf: snapshot.memory)
        let space = AddressSpace(memory: memory, tablesRoot: snapshot.tablesRoot, allocator: snapshot.allocator)
        let builtins = BuiltinHostCalls(
            space: space, heapStart: snapshot.program.imageEnd, mmapTop: snapshot.image.mmapTop,
            outputs: [1: snapshot.configuration.standardOutput, 2: snapshot.configuration.standardError],
            outputLimit: snapshot.configuration.outputLimit)
        builtins.addressSpaceLimit = snapshot.configuration.addressSpaceLimit
        builtins.state = snapshot.builtins
        let linux = LinuxPersonality(space: space, builtins: builtins, fileSystem: snapshot.fileSystem,
                                     configuration: snapshot.configuration, image: snapshot.image, stackBottom: snapshot.stackBottom)
        linux.state = snapshot.linux.detached()
        let vm: VirtualMachine, vcpu: VirtualCPU
        do {
            (vm, vcpu) = try MicroVM.create(system: snapshot.system, memory: memory, dirtyTracking: tracking,
                                            exceptionStubs: snapshot.configuration.exceptionDelivery.usesStubs(on: snapshot.system.platform),
                                            specialRegisters: { _ in snapshot.specialRegisters },
                                            registers: snapshot.registers)
            // Everything else of the vCPU (FPU/SSE/AVX, XCR0, debug registers, MSRs) as well.
            try vcpu.restoreState(snapshot.vcpuState)
        } catch {
            throw .kvm(error)
        }
        self.init(configuration: snapshot.configuration, image: snapshot.image, system: snapshot.system,
                  memory: memory, vm: vm, vcpu: vcpu, space: space, builtins: builtins, linux: linux,
                  stackBottom: snapshot.stackBottom, fork: ForkState(snapshot: snapshot, tracking: tracking), phase: .paused(snapshot.registers))
        hostProgramPath = snapshot.hostProgramPath
        parkingLayout = snapshot.parking
        handlers = snapshot.handlers
    }

    /// Brings a fork back to its snapshot, whatever happened since (a fault, a timeout, an exit,
    /// a finished call): the pages the guest or the host wrote are copied back from the snapshot
    /// (KVM's dirty log plus the host's own record), then registers and host-call state are put back.
    /// Costs one `KVM_GET_DIRTY_LOG` plus a page copy per dirtied page, independent of memory size.
    public func reset() throws(SandboxError) {
        guard let fork else { throw .notAFork }
        if case .running = phase { throw .alreadyRunning }
        interruptHandle.clear()
        let snapshot = fork.snapshot
        let restoredBefore = memory.restoredPages
        // Shared memory a request mapped goes back to the snapshot's own pages first (the
        // dirty pages restored below then land there, never in an object another VM maps).
        guard memory.removeOverlays() else { throw .hostResource(operation: "mmap(restore shared pages)", errno: .noMemory) }
        defer { statistics.pagesRestoredByLastReset = memory.restoredPages - restoredBefore }
        do {
            switch fork.tracking {
            case .bitmap:
                try vm.fetchDirtyLog(slot: 0, into: &fork.dirtyBitmap)
                fork.forEachDirtyPage { memory.restorePage($0) }
            case .hotPages:
                try resetKeepingHotPages(fork)
            case .ring:
                try harvestDirtyRing()
            }
            // Pages taken from the log during the run (a full ring, a memslot re-created by mprotect).
            for page in fork.harvested { memory.restorePage(page) }
            fork.harvested.removeAll(keepingCapacity: true)
        } catch {
            throw .kvm(error)
        }
        // `restorePage` is not recorded as a host write, so this leaves the record empty.
        for page in memory.takeHostDirtyPages() { memory.restorePage(page) }

        let translationsChanged = space.translationsChanged
        space.restore(allocator: snapshot.allocator)
        let fsBaseChanged = builtins.fsBase != snapshot.builtins.fsBase
        builtins.state = snapshot.builtins
        builtins.captured.clear()
        linux.endProcesses()
        linux.releasePipes()
        linux.cancelSharedWaits()
        linux.state = snapshot.linux.detached()
        vcpu.modifyRegisters { $0 = snapshot.registers }
        vcpu.clearImmediateExit()
        var faulted = false
        if case .finished(.fault) = phase { faulted = true }
        if !parkedUnprotectedPages.isEmpty { faulted = true }  // a parked VM resumed after write faults
        if faulted { vcpu.setEvents(snapshot.events) }
        do {
            // The guest's x87/SSE/AVX registers and MXCSR: a request must not see what the last
            // one left there. (XCRs, debug registers and MSRs cannot change at CPL 3.)
            try vcpu.setFloatingPointState(snapshot.vcpuState.floatingPoint)
            if translationsChanged {
                // The page tables just lost translations the guest may have used. KVM's shadow MMU
                // (PVM) caches guest tables and never sees host writes to them, and a CR3 reload
                // reuses its cached shadow pages; re-creating the memslot makes KVM zap them all.
                try recreateMemorySlot()
            } else if !parkedUnprotectedPages.isEmpty {
                // A parked VM's pages are read-only again: drop just their translations.
                if !memory.invalidateTranslations(ofPages: parkedUnprotectedPages) { try recreateMemorySlot() }
            }
            parkedUnprotectedPages.removeAll(keepingCapacity: true)
            // With IDT stubs the vCPU may have stopped at CPL 0 (in a stub or the syscall entry);
            // after a page fault CR2 holds the faulting address (found by the paranoid check).
            if fsBaseChanged || usesExceptionStubs || faulted { try vcpu.setSpecialRegisters(snapshot.specialRegisters) }
        } catch {
            throw .kvm(error)
        }
        statistics = RunStatistics()
        phase = .paused(snapshot.registers)
        if configuration.verifyResets {
            let differences = try differencesFromSnapshot()
            guard differences.isEmpty else { throw .resetVerificationFailed(differences) }
        }
    }

    /// How many resets in a row a page must be dirty in to stay writable (`.hotPages`), and how
    /// often every page is protected again.
    static let hotResets: UInt8 = 2
    static let coolingInterval = 256

    /// `.hotPages`: copies back every page the log reports (hot pages are reported every time:
    /// their bits are never cleared), then clears and write-protects only the pages that are
    /// not hot, so hot ones take no fault in the next request.
    private func resetKeepingHotPages(_ fork: ForkState) throws(KVMError) {
        try vm.fetchDirtyLog(slot: 0, into: &fork.dirtyBitmap)
        fork.resetsSinceCooling += 1
        let cooling = fork.resetsSinceCooling >= Self.coolingInterval
        if cooling { fork.resetsSinceCooling = 0 }
        for index in fork.clearMask.indices { fork.clearMask[index] = 0 }
        // Pages dirty last time but not now lose their streak (hot ones are always dirty).
        for index in fork.streakPages where fork.dirtyBitmap[index / 64] & (1 << UInt64(index % 64)) == 0 {
            fork.streaks[index] = 0
        }
        fork.streakPages.removeAll(keepingCapacity: true)
        fork.forEachDirtyPage { page in
            memory.restorePage(page)
            let index = Int(page)
            guard index < fork.streaks.count else { return }
            let streak = fork.streaks[index] < UInt8.max ? fork.streaks[index] + 1 : UInt8.max
            fork.streaks[index] = cooling ? 0 : streak
            if !cooling { fork.streakPages.append(index) }
            if cooling || streak < Self.hotResets { fork.clearMask[index / 64] |= 1 << UInt64(index % 64) }
        }
        try vm.clearDirtyLog(slot: 0, pages: fork.streaks.count, bitmap: &fork.clearMask)
    }

    /// Moves the pages listed in the vCPU's dirty ring to `fork.harvested` and re-arms the ring
    /// (at a reset, and when a run fills the ring).
    func harvestDirtyRing() throws(KVMError) {
        guard let fork, let ring = vcpu.dirtyRing else { return }
        ring.harvest { slot, page in
            if slot == 0 { fork.harvested.append(page) }
        }
        try vm.resetDirtyRings()
    }

    /// Whether this sandbox is a fork of a snapshot (and so can be reset).
    public var isFork: Bool { fork != nil }
}

extension Sandbox {
    /// The paranoid reset check: compares every guest page, the whole vCPU state (registers,
    /// segments, events, x87/SSE/AVX, XCRs, debug registers, MSRs) and the host-call state with
    /// the snapshot, and returns what differs (empty: the fork is indistinguishable from it).
    /// Meant right after `reset()`; `SandboxConfiguration.verifyResets` runs it after every reset.
    public func differencesFromSnapshot() throws(SandboxError) -> [String] {
        guard let fork else { throw .notAFork }
        let snapshot = fork.snapshot
        var result: [String] = []
        let pages = memory.pagesDifferingFromSource()
        if !pages.isEmpty {
            let listed = pages.prefix(8).map { "0x\(String($0 << PageSize.shift, radix: 16))" }.joined(separator: ", ")
            result.append("\(pages.count) guest page(s) (guest-physical \(listed)\(pages.count > 8 ? ", ..." : ""))")
        }
        do {
            let now = try vcpu.saveState(capabilities: system.stateCapabilities)
            result += differences(between: snapshot.vcpuState, and: now).map { "vCPU: \($0)" }
        } catch {
            throw .kvm(error)
        }
        if !builtins.state.matches(snapshot.builtins) { result.append("host-call state (heap, mmap regions, TLS base)") }
        if space.allocatorState.next != snapshot.allocator.next { result.append("guest-physical page allocator") }
        return result
    }
}
