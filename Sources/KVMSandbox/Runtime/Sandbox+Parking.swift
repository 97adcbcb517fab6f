import Atomics
import Synchronization

/// How a parked VM (`ParkedSandbox`) runs requests.
public struct ParkingConfiguration: Sendable, Equatable {
    /// Bytes of the request arena at `GuestLayout.arenaBase`: the request's stack (from the top)
    /// and request heap (`ks_request_alloc`, from the bottom), the only guest memory a request
    /// may write without a VM exit. A multiple of 4 KiB, from 16 KiB to 64 MiB; default 64 KiB.
    /// Every request costs a copy of the whole arena.
    public var arenaSize: UInt64
    /// Polls of the parking page the idle stub makes before it sleeps by an exit (~25 ns each
    /// on PVM; default 16384, ~0.4 ms), so that an idle VM costs no CPU.
    public var idleSpin: UInt64
    /// Every how many fast resets the host stops the vCPU once to check that it is really
    /// parked in the idle loop (then restores the arena again): a guest that fakes the end of
    /// its request and keeps running is caught within this many requests. 0: never.
    public var verificationInterval: Int
    /// Pages outside the arena that requests wrote and that stay writable: each costs one write
    /// fault (an exit) the first time, then a page copy after every request (they are copied
    /// back with the arena). Past this many, the VM takes the slow reset, which protects them
    /// all again. 0: every write outside the arena means a slow reset.
    public var keptWritablePages: Int

    /// A configuration; the defaults suit small functions.
    public init(arenaSize: UInt64 = 64 << 10, idleSpin: UInt64 = 1 << 14, verificationInterval: Int = 1024,
                keptWritablePages: Int = 64) {
        self.arenaSize = arenaSize
        self.idleSpin = idleSpin
        self.verificationInterval = verificationInterval
        self.keptWritablePages = keptWritablePages
    }
}

/// Where a parked snapshot keeps its arena and parking page, and which pages it made read-only.
struct ParkingLayout: Sendable {
    let configuration: ParkingConfiguration
    /// Guest-physical address of the arena (contiguous, `configuration.arenaSize` bytes).
    let arenaPhysical: UInt64
    /// Guest-physical address of the parking page.
    let parkingPage: UInt64
    /// Virtual pages the program could write at the snapshot, now read-only: a write there
    /// faults, and the host makes the page writable until the next (slow) reset.
    let protectedPages: Set<UInt64>
}

/// What the vCPU thread of a parked VM tells the thread that posts requests, and back.
final class ParkingMonitor: Sendable {
    /// An exit happened that may have changed state a fast reset does not restore.
    let tainted = ManagedAtomic<Bool>(false)
    /// The posting thread wants the vCPU out of `KVM_RUN` (slow reset, verification, timeout).
    let stopRequested = ManagedAtomic<Bool>(false)
    /// VM exits of the parked VM so far.
    let exits = ManagedAtomic<Int>(0)
    /// Pages made writable again after a write fault (since the last slow reset).
    let unprotectedPages = ManagedAtomic<Int>(0)
    /// Pages outside the arena that stay writable, copied back after every request (appended
    /// by the vCPU thread, read by the posting thread).
    let keptPages = HostMutex<[KeptPage]>([])

    /// A page kept writable: where the guest sees it, and its guest-physical page.
    struct KeptPage {
        let virtual: UInt64, physical: UInt64
    }
}

extension Sandbox {
    /// Turns this paused fork into the template of parked VMs: maps the parking page and the
    /// arena (with an unmapped guard page below it), makes every other user page read-only,
    /// writes the idle stub's parameters and puts the vCPU at the idle stub.
    func prepareParking(_ parking: ParkingConfiguration) throws(SandboxError) {
        guard case .paused = phase else { throw .notPaused }
        guard parkingLayout == nil else { throw .invalidConfiguration("the snapshot is parked already") }
        guard parking.arenaSize >= 16 << 10, parking.arenaSize <= GuestLayout.maximumArenaSize,
              parking.arenaSize % PageSize.bytes == 0 else {
            throw .invalidConfiguration("the arena must be a multiple of 4 KiB from 16 KiB to \(GuestLayout.maximumArenaSize >> 20) MiB")
        }
        guard parking.idleSpin > 0, parking.verificationInterval >= 0, (0...65536).contains(parking.keptWritablePages) else {
            throw .invalidConfiguration("the idle spin must be positive, the verification interval not negative, and at most 65536 pages kept writable")
        }
        guard linux.state.threads.count <= 1 else {
            throw .invalidConfiguration("only a single-threaded guest can be parked (\(linux.state.threads.count) threads)")
        }
        let state: VCPUState
        do { state = try vcpu.saveState(capabilities: system.stateCapabilities) } catch { throw .kvm(error) }
        let (sregs, floatingPoint) = (state.specialRegisters, state.floatingPoint)
        // With OSXSAVE on (hardware KVM), the stub restores the whole XSAVE area (AVX too).
        let xsave = sregs.cr4 & (1 << 18) != 0
        guard let image = ParkingStub.floatingPointImage(floatingPoint, xsave: xsave, size: Int(X86CPUIdentity.xsaveSize),
                                                         xcr0: state.xcr0 ?? 0x7) else {
            throw .invalidConfiguration("parking needs KVM_CAP_XSAVE and an XSAVE area of at most \(ParkingStub.maximumImageSize) bytes (this CPU's: \(X86CPUIdentity.xsaveSize))")
        }
        // A request can only ever load FS/GS selectors whose base is 0 (the GDT's): GS must be
        // 0 already, and a non-zero FS base must point at readable memory for the stub's check.
        guard sregs.gs.base == 0 else { throw .invalidConfiguration("parking needs a zero GS base") }
        // DS, ES and GS are reloaded with one selector before every request (a request may load
        // the null selector into them); their bases are 0 in 64-bit mode.
        guard sregs.ds.selector == sregs.es.selector, sregs.ds.selector == sregs.gs.selector else {
            throw .invalidConfiguration("parking needs the same DS, ES and GS selectors")
        }
        let checksFS = sregs.fs.base != 0
        if checksFS, space.tables.translate(sregs.fs.base, for: .read, memory: memory) == nil {
            throw .invalidConfiguration("the FS base 0x\(String(sregs.fs.base, radix: 16)) is not readable")
        }
        let arenaEnd = GuestLayout.arenaBase + parking.arenaSize
        var page = GuestLayout.arenaBase - PageSize.bytes
        while page < arenaEnd {
            guard !space.isMapped(page) else { throw .invalidConfiguration("the arena's range is in use at 0x\(String(page, radix: 16))") }
            page += PageSize.bytes
        }
        guard !space.isMapped(GuestLayout.parkingPage) else { throw .invalidConfiguration("the parking page is in use") }

        // Every writable user page but the mailbox becomes read-only.
        var writable: [(page: UInt64, entry: UInt64)] = []
        space.tables.forEachLeaf(from: 0, to: X86PageTables.userAddressLimit, memory: memory) { page, entry in
            guard entry & X86PageTables.user != 0, entry & X86PageTables.writable != 0, page != GuestLayout.mailboxPage else { return }
            writable.append((page, entry))
        }
        for (page, entry) in writable {
            try space.protect(page, X86PageTables.permissions(of: entry).subtracting(.write))
        }
        // The parking page is read-only for the guest: only the host writes requests there.
        try space.mapNew(GuestLayout.parkingPage, length: PageSize.bytes, [.read])
        let arenaPhysical = try space.mapNewContiguous(GuestLayout.arenaBase, length: parking.arenaSize, [.read, .write])
        guard let parkingPhysical = space.tables.translateForHost(GuestLayout.parkingPage, memory: memory) else {
            preconditionFailure("the parking page was just mapped")
        }
        let parameters = [parking.idleSpin, checksFS ? 1 : 0, arenaEnd, xsave ? 1 : 0, UInt64(sregs.ds.selector)]
        do {
            try space.hostWrite(ParkingStub.code, at: ParkingStub.entry)
            try space.hostWrite(image, at: GuestLayout.syscallStubPage + ParkingStub.floatingPointOffset)
            try space.hostWrite([UInt8](littleEndianWords: parameters), at: GuestLayout.syscallStubPage + ParkingStub.parametersOffset)
        } catch {
            preconditionFailure("the stub page is mapped in every VM")
        }
        let registers = X86CPUState.initialRegisters(entry: ParkingStub.entry, stackPointer: arenaEnd)
        vcpu.modifyRegisters { $0 = registers }
        phase = .paused(registers)
        parkingLayout = ParkingLayout(configuration: parking, arenaPhysical: arenaPhysical, parkingPage: parkingPhysical,
                                      protectedPages: Set(writable.map(\.page)))
    }

    /// A parked VM's write fault on a page it may write outside its arena: the page becomes
    /// writable and is copied back after every request (`keptPages`), or, past
    /// `keptWritablePages`, until the next (slow) reset, which copies it back and protects it
    /// again. True when the fault was that and the guest may resume.
    func unprotectParkedPage(vector: UInt8, errorCode: UInt32?) throws(KVMError) -> Bool {
        // #PF with P, W and U set: a user write to a present, read-only page.
        guard let parkingLayout, let parkingMonitor, vector == 14, let errorCode, errorCode & 0x7 == 0x7 else { return false }
        let page = PageSize.alignDown(try vcpu.specialRegisters().cr2)
        guard parkingLayout.protectedPages.contains(page), let entry = space.tables.leafEntry(page, memory: memory),
              entry & X86PageTables.writable == 0 else { return false }
        do {
            // Gaining write permission needs no flush; the reset that takes it back drops the
            // page's translations (`parkedUnprotectedPages`), cheaper than all of them.
            try space.protect(page, X86PageTables.permissions(of: entry).union(.write), notingChange: false)
        } catch {
            return false
        }
        let physical = entry & X86PageTables.addressMask
        parkedUnprotectedPages.append(physical)
        let limit = parkingLayout.configuration.keptWritablePages
        let kept = parkingMonitor.keptPages.withLock { pages in
            guard pages.count < limit else { return false }
            pages.append(ParkingMonitor.KeptPage(virtual: page, physical: physical))
            return true
        }
        if !kept { parkingMonitor.tainted.store(true, ordering: .sequentiallyConsistent) }
        parkingMonitor.unprotectedPages.wrappingIncrement(ordering: .relaxed)
        return true
    }

    /// A parked VM's exit: any but the idle stub's sleep, a mailbox wait, a kick or a write
    /// fault the host resolves may have changed what a fast reset does not restore (the next
    /// reset is then a slow one). Exceptions are judged by their handlers (`taintParkedVM`).
    func noteParkedEvent(_ event: GuestEvent, _ monitor: ParkingMonitor) {
        monitor.exits.wrappingIncrement(ordering: .relaxed)
        switch event {
        case .interrupted, .dirtyLogFull, .exception: return
        case .hostCallTrap:
            let number = vcpu.registers.callNumber
            if number == ParkingStub.parkWait || number == HostCallNumber.mailboxWait { return }
        case .exceptionReport where usesExceptionStubs:
            // The idle stub's sleep reported as #GP (QEMU's TCG checks another TSS's I/O bitmap).
            let registers = vcpu.registers
            if ExceptionStubs.vector(atStub: registers.instructionPointer) == 13, registers.callNumber == ParkingStub.parkWait,
               let frame = try? space.hostRead(registers.stackPointer &+ 8, count: 8),
               UInt64(littleEndianBytes: frame[0..<8]) == ParkingStub.entry + ParkingStub.idleOutOffset {
                return
            }
            if ExceptionStubs.vector(atStub: registers.instructionPointer) == 14 { return }  // judged by the handler
        default: break
        }
        monitor.tainted.store(true, ordering: .sequentiallyConsistent)
    }

    /// A parked VM's exception that was not a resolved write fault: the next reset is slow.
    func taintParkedVM() {
        parkingMonitor?.tainted.store(true, ordering: .sequentiallyConsistent)
    }
}
