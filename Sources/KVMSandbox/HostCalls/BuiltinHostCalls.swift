import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What a built-in call asks the run loop to do.
enum HostCallEffect: Equatable {
    /// Return this value in `rax` and resume.
    case value(Int64)
    /// The guest exited with this status.
    case exit(Int32)
    /// The guest raised this signal at itself (e.g. `abort()`).
    case signal(Int32)
    /// Set the FS base (TLS pointer), return 0, resume.
    case setFSBase(UInt64)
    /// Not a built-in call.
    case notBuiltin
    /// A threading call: the run loop saves, switches or creates thread state on the vCPU.
    case thread(ThreadAction)
    /// A process call that needs the VM itself (`fork`, `execve`): the sandbox carries it out.
    case process(ProcessRequest)
}

/// The built-in host calls: output, exit, memory (brk, anonymous mmap), clocks, and the few Linux
/// calls musl's start-up and stdio make. Every guest pointer goes through `GuestMemoryView`.
final class BuiltinHostCalls {
    private let space: AddressSpace
    private let outputs: [Int32: OutputDestination]
    private let outputLimit: UInt64
    /// Everything the calls change, as one value: a snapshot saves it, a reset puts it back.
    struct State: Codable {
        var outputWritten: UInt64 = 0
        var fsBase: UInt64 = 0
        /// The heap (brk) grows up from the image; mmap grows down from below the stack.
        var heapEnd: UInt64
        var heapMappedEnd: UInt64
        var mmapBottom: UInt64
        /// Unmapped anonymous ranges, still mapped to their pages, reused (zeroed) by later mmaps.
        /// Reusing translations instead of changing them means no guest TLB can ever hold a stale one.
        var freeRanges: [FreeRange] = []
        /// Mappings placed where the guest hinted, below the top-down region (LuaJIT wants its
        /// machine code within 2 GiB of its own): sorted, disjoint, page-aligned `[start, end)`.
        var placed: [PlacedRange] = []

        /// Whether the guest-visible parts (not the captured output) are equal.
        func matches(_ other: State) -> Bool {
            outputWritten == other.outputWritten && fsBase == other.fsBase && heapEnd == other.heapEnd
                && heapMappedEnd == other.heapMappedEnd && mmapBottom == other.mmapBottom
                && freeRanges.elementsEqual(other.freeRanges) { $0.start == $1.start && $0.length == $1.length }
                && placed.elementsEqual(other.placed) { $0.start == $1.start && $0.end == $1.end }
        }
    }
    var state: State
    /// Where `.capture` streams go: shared with every process forked from this one.
    var captured = CapturedOutput()
    /// The vCPU's kick flag: output stops waiting for a slow reader once the run is interrupted.
    var interrupter: VCPUInterrupter?
    private let heapStart: UInt64
    private let mmapTop: UInt64

    /// The most address space the mmap region and the hinted mappings may span together
    /// (reservations included): `SandboxConfiguration.addressSpaceLimit`.
    var addressSpaceLimit: UInt64 = SandboxConfiguration().addressSpaceLimit

    /// Address space the guest's mappings span: the top-down region and the hinted ranges.
    var mappedAddressSpace: UInt64 { (mmapTop - state.mmapBottom) + state.placed.reduce(0) { $0 + ($1.end - $1.start) } }

    init(space: AddressSpace, heapStart: UInt64, mmapTop: UInt64, outputs: [Int32: OutputDestination], outputLimit: UInt64) {
        self.space = space
        self.heapStart = heapStart
        self.mmapTop = mmapTop
        self.state = State(heapEnd: heapStart, heapMappedEnd: heapStart, mmapBottom: mmapTop)
        self.outputs = outputs
        self.outputLimit = outputLimit
    }

    /// The FS base (TLS pointer) the guest last set.
    var fsBase: UInt64 { state.fsBase }

    /// Serves call `number`; `.notBuiltin` when the number is not one of ours.
    func handle(_ call: HostCall) throws -> HostCallEffect {
        let E = HostCallErrno.self
        switch call.number {
        case HostCallNumber.write:
            return .value(try write(fd: call.signed(0), call.memory, address: call[1], count: call[2]))
        case HostCallNumber.writev:
            return .value(try writev(fd: call.signed(0), call.memory, vector: call[1], count: call[2]))
        case HostCallNumber.read:
            return .value(-Int64(E.EBADF))
        case HostCallNumber.exit, HostCallNumber.exitGroup:
            return .exit(Int32(truncatingIfNeeded: call[0] & 0xff))
        case HostCallNumber.brk:
            return .value(Int64(bitPattern: brk(call[0])))
        case HostCallNumber.mmap:
            let address = mmap(length: call[1], protection: call[2], flags: call[3], hint: call[0])
            return .value(address)
        case HostCallNumber.munmap:
            return .value(munmap(call[0], length: call[1]))
        case HostCallNumber.madvise:
            return .value(0)
        case HostCallNumber.mprotect:
            return .value(-Int64(E.ENOSYS))
        case HostCallNumber.ioctl:
            return .value(try ioctl(fd: call.signed(0), request: call[1], call.memory, argument: call[2]))
        case HostCallNumber.archPrctl:
            switch call[0] {
            case 0x1002: return call[1] < X86PageTables.userAddressLimit ? .setFSBase(call[1]) : .value(-Int64(E.EPERM))
            case 0x1003: try call.memory.store(fsBase, at: call[1]); return .value(0)
            default: return .value(-Int64(E.EINVAL))
            }
        case HostCallNumber.setTidAddress, HostCallNumber.getpid, HostCallNumber.gettid:
            return .value(1)
        case HostCallNumber.rtSigaction, HostCallNumber.rtSigprocmask:
            return .value(0)
        case HostCallNumber.kill, HostCallNumber.tkill:
            return Self.raise(call[1])
        case HostCallNumber.tgkill:
            return Self.raise(call[2])
        case HostCallNumber.clockGettime:
            return .value(try clockGettime(clock: call[0], call.memory, into: call[1]))
        case HostCallNumber.getrandom:
            let count = Int(min(call[1], 1 << 20))
            var bytes = [UInt8](repeating: 0, count: count)
            // One getrandom(2) for the whole buffer (the Swift generator makes one per 8 bytes).
            let filled = bytes.withUnsafeMutableBytes { raw in
                raw.count == 0 ? 0 : chost_getrandom(raw.baseAddress!, UInt(raw.count))
            }
            // Like Linux: a large request interrupted by a signal (the watchdog's kick) is short.
            guard filled > 0 || count == 0 else { return .value(-Int64(HostCallErrno.EINTR)) }
            try call.memory.write(Array(bytes.prefix(filled)), to: call[0])
            return .value(Int64(filled))
        default:
            return .notBuiltin
        }
    }

    func setFSBase(_ base: UInt64) { state.fsBase = base }

    /// Linux's highest signal number (`_NSIG - 1`).
    static let highestSignal: UInt64 = 64

    /// `kill`/`tkill`/`tgkill` at the guest itself: signal 0 only probes (0); 1-64 ends the run
    /// as that signal; anything else is `-EINVAL`, as on Linux.
    static func raise(_ signal: UInt64) -> HostCallEffect {
        switch signal {
        case 0: return .value(0)
        case 1...highestSignal: return .signal(Int32(signal))
        default: return .value(-Int64(HostCallErrno.EINVAL))
        }
    }

    // MARK: output

    private func write(fd: Int64, _ memory: GuestMemoryView, address: UInt64, count: UInt64) throws -> Int64 {
        guard fd == 1 || fd == 2 else { return -Int64(HostCallErrno.EBADF) }
        return try writeOutput(stream: Int32(fd), memory, address: address, count: count)
    }

    /// Writes guest bytes to output stream 1 (stdout) or 2 (stderr), within the output limit.
    func writeOutput(stream fd: Int32, _ memory: GuestMemoryView, address: UInt64, count: UInt64) throws -> Int64 {
        guard let destination = outputs[fd] else { return -Int64(HostCallErrno.EBADF) }
        guard count > 0 else { return 0 }
        guard state.outputWritten < outputLimit else { return -Int64(HostCallErrno.EFBIG) }
        let allowed = min(count, outputLimit - state.outputWritten)
        var written: UInt64 = 0
        var failure: Int64?
        try memory.withReadableChunks(address, count: allowed) { chunk in
            guard failure == nil else { return }
            switch destination {
            case .discard: written += UInt64(chunk.count)
            case .capture:
                let taken = captured.append(chunk, to: fd, limit: outputLimit)
                written += UInt64(taken)
                if taken < chunk.count { failure = -Int64(HostCallErrno.EFBIG) }
            case .fileDescriptor(let hostFD):
                switch OutputWriter.write(chunk, to: hostFD, interrupted: { interrupter?.isInterrupted ?? false }) {
                case .complete: written += UInt64(chunk.count)
                case .interrupted(let count):
                    written += UInt64(count)
                    failure = -Int64(HostCallErrno.EINTR)
                case .failed(let errno, let count):
                    written += UInt64(count)
                    failure = -Int64(errno == .brokenPipe ? HostCallErrno.EPIPE : HostCallErrno.EIO)
                }
            }
        }
        state.outputWritten += written
        // Linux: a partial write returns its count; an error only when nothing was written.
        if let failure, written == 0 { return failure }
        return Int64(written)
    }

    /// At most this many iovecs per writev (Linux's IOV_MAX).
    static let maximumIOVectors: UInt64 = 1024

    private func writev(fd: Int64, _ memory: GuestMemoryView, vector: UInt64, count: UInt64) throws -> Int64 {
        guard fd == 1 || fd == 2 else { return -Int64(HostCallErrno.EBADF) }  // even when every vector is empty
        return try Self.transferVectors(memory, table: vector, count: count) { try write(fd: fd, memory, address: $0, count: $1) }
    }

    /// readv/writev: the iovec table at `table` (at most `maximumIOVectors`, else -EINVAL), each
    /// non-empty vector through `transfer` in turn, stopping at the first short one; an error is
    /// returned only when nothing moved, as on Linux.
    static func transferVectors(_ memory: GuestMemoryView, table: UInt64, count: UInt64,
                                _ transfer: (_ base: UInt64, _ length: UInt64) throws -> Int64) throws -> Int64 {
        guard count <= maximumIOVectors else { return -Int64(HostCallErrno.EINVAL) }
        let entries = try memory.read(table, count: Int(count) * 16)
        var total: Int64 = 0
        for index in 0..<Int(count) {
            let base = UInt64(littleEndianBytes: entries[index * 16..<index * 16 + 8])
            let length = UInt64(littleEndianBytes: entries[index * 16 + 8..<index * 16 + 16])
            guard length > 0 else { continue }
            let moved = try transfer(base, length)
            if moved < 0 { return total > 0 ? total : moved }
            total += moved
            if UInt64(moved) < length { break }
        }
        return total
    }

    /// Whether a write to output `stream` may wait (it goes to a host descriptor).
    func outputMayBlock(stream: Int32) -> Bool {
        if case .fileDescriptor = outputs[stream] { return true }
        return false
    }

    /// The captured bytes written to `fd` (by this process and every other of its run).
    func capturedOutput(fd: Int32) -> [UInt8] { captured.bytes(fd: fd) }

    /// TIOCGWINSZ on fd 1 or 2 succeeds when the host stream is a terminal (so libc line-buffers
    /// it, as on Linux); every other ioctl is -ENOTTY.
    private func ioctl(fd: Int64, request: UInt64, _ memory: GuestMemoryView, argument: UInt64) throws -> Int64 {
        guard request == 0x5413, fd == 1 || fd == 2 else { return -Int64(HostCallErrno.ENOTTY) }
        return try windowSize(stream: Int32(fd), memory, into: argument)
    }

    /// TIOCGWINSZ for output stream 1 or 2: the host terminal's size, or -ENOTTY.
    func windowSize(stream: Int32, _ memory: GuestMemoryView, into argument: UInt64) throws -> Int64 {
        guard case .fileDescriptor(let hostFD) = outputs[stream], isatty(hostFD) == 1 else {
            return -Int64(HostCallErrno.ENOTTY)
        }
        var size = winsize()
        guard ckvmIoctlPointer(hostFD, UInt(TIOCGWINSZ), &size) == 0 else { return -Int64(HostCallErrno.ENOTTY) }
        try memory.write([UInt8(truncatingIfNeeded: size.ws_row), UInt8(size.ws_row >> 8),
                          UInt8(truncatingIfNeeded: size.ws_col), UInt8(size.ws_col >> 8), 0, 0, 0, 0], to: argument)
        return 0
    }

    // MARK: memory

    /// Linux brk: grows (never shrinks) the heap; returns the new break, or the old one on failure.
    private func brk(_ requested: UInt64) -> UInt64 {
        guard requested > state.heapEnd else { return state.heapEnd }
        guard let mappedEnd = PageSize.alignUp(requested), mappedEnd <= state.mmapBottom,
              !state.placed.contains(where: { $0.start >= state.heapMappedEnd && $0.start < mappedEnd }) else { return state.heapEnd }
        if mappedEnd > state.heapMappedEnd {
            guard (try? space.mapNew(state.heapMappedEnd, length: mappedEnd - state.heapMappedEnd, [.read, .write])) != nil else {
                return state.heapEnd
            }
            state.heapMappedEnd = mappedEnd
        }
        state.heapEnd = requested
        return state.heapEnd
    }

    /// Anonymous private mappings only, placed top-down below the stack (or at `hint` when that
    /// range is free, as Linux does); no executable memory.
    func mmap(length: UInt64, protection: UInt64, flags: UInt64, hint: UInt64 = 0) -> Int64 {
        let E = HostCallErrno.self
        let anonymous: UInt64 = 0x20, fixed: UInt64 = 0x10, exec: UInt64 = 0x4
        guard flags & anonymous != 0, flags & fixed == 0 else { return -Int64(E.EINVAL) }
        guard protection & exec == 0 else { return -Int64(E.EACCES) }
        // PROT_NONE only reserves address space (Go reserves 512 MiB at start-up): it costs no
        // memory until made accessible, so it is bounded by the address space, not the memory.
        let limit = protection == 0 ? Self.largestReservation : space.memory.size
        guard length > 0, let size = PageSize.alignUp(length), size <= limit else { return -Int64(E.ENOMEM) }
        guard size <= addressSpaceLimit, mappedAddressSpace <= addressSpaceLimit - size else { return -Int64(E.ENOMEM) }
        if hint != 0, let start = place(at: hint, size: size, protection: protection) { return Int64(start) }
        if protection != 0, let index = state.freeRanges.firstIndex(where: { $0.length >= size }) {
            let start = state.freeRanges[index].start
            state.freeRanges[index].start += size
            state.freeRanges[index].length -= size
            if state.freeRanges[index].length == 0 { state.freeRanges.remove(at: index) }
            space.zeroMapped(start, length: size)
            // Freed pages keep their old permissions: give them the ones asked for now. Losing
            // write or execute permission needs cached translations dropped (PVM's shadow MMU
            // would keep the old ones); gaining them does not (the next access faults and re-walks).
            let permissions: PagePermissions = protection & 2 != 0 ? [.read, .write] : [.read]
            var page = start
            while page < start + size {
                if let entry = space.tables.leafEntry(page, memory: space.memory) {
                    let wasWritable = entry & X86PageTables.writable != 0, wasExecutable = entry & X86PageTables.noExecute == 0
                    let writable = protection & 2 != 0
                    if wasExecutable || wasWritable != writable || entry & X86PageTables.user == 0 {
                        try? space.protect(page, permissions)
                    }
                }
                page += PageSize.bytes
            }
            return Int64(start)
        }
        guard state.mmapBottom >= size, state.mmapBottom - size >= state.heapMappedEnd + GuestLayout.stackGap else { return -Int64(E.ENOMEM) }
        let start = state.mmapBottom - size
        if protection != 0 {
            let permissions: PagePermissions = protection & 2 != 0 ? [.read, .write] : [.read]
            guard (try? space.mapNew(start, length: size, permissions)) != nil else { return -Int64(E.ENOMEM) }
        }
        state.mmapBottom = start
        return Int64(start)
    }

    /// The largest single PROT_NONE reservation (1 TiB; the address space below the stack is 128 TiB).
    static let largestReservation: UInt64 = 1 << 40

    /// A mapping at the guest's hint: only between the heap (plus a gap) and the top-down
    /// region, only over pages that are neither mapped nor placed before. Nil: use the region.
    private func place(at hint: UInt64, size: UInt64, protection: UInt64) -> UInt64? {
        guard let start = PageSize.alignUp(hint), start >= state.heapMappedEnd + GuestLayout.stackGap,
              start < state.mmapBottom, size <= state.mmapBottom - start else { return nil }
        let end = start + size
        guard !state.placed.contains(where: { $0.start < end && $0.end > start }) else { return nil }
        var page = start
        while page < end {
            if space.isMapped(page) { return nil }
            page += PageSize.bytes
        }
        if protection != 0 {
            let permissions: PagePermissions = protection & 2 != 0 ? [.read, .write] : [.read]
            guard (try? space.mapNew(start, length: size, permissions)) != nil else { return nil }
        }
        state.placed.append(PlacedRange(start: start, end: end))
        state.placed.sort { $0.start < $1.start }
        return start
    }

    /// Whether `[start, start + size)` lies in the guest's mappings: the top-down region
    /// `[mmapBottom, mmapTop)` or one range placed at a hint. MAP_FIXED, munmap, mremap and
    /// executable mprotect act only there (never on the image, heap, stack or host pages).
    func ownsMappings(_ start: UInt64, _ size: UInt64) -> Bool {
        let (end, overflow) = start.addingReportingOverflow(size)
        guard !overflow else { return false }
        if start >= state.mmapBottom && end <= mmapTop { return true }
        return state.placed.contains { start >= $0.start && end <= $0.end }
    }

    /// Takes `[start, start + length)` out of the free list (a MAP_FIXED mapping claims it).
    func claim(_ start: UInt64, length: UInt64) {
        let end = start + length
        var kept: [FreeRange] = []
        for range in state.freeRanges {
            let rangeEnd = range.start + range.length
            if rangeEnd <= start || range.start >= end { kept.append(range); continue }
            if range.start < start { kept.append(FreeRange(start: range.start, length: start - range.start)) }
            if rangeEnd > end { kept.append(FreeRange(start: end, length: rangeEnd - end)) }
        }
        state.freeRanges = kept
    }

    /// Returns anonymous pages to the free list (they stay mapped; see `state.freeRanges`). Only the
    /// mmap region can be unmapped: the image, heap, stack and system pages cannot.
    private func munmap(_ address: UInt64, length: UInt64) -> Int64 {
        guard address % PageSize.bytes == 0, length > 0, let size = PageSize.alignUp(length),
              ownsMappings(address, size) else { return -Int64(HostCallErrno.EINVAL) }
        // The parts of the range not already free (freeRanges is sorted and merged), then the
        // mapped runs within them: linear in the pages and ranges, whatever the guest asks.
        let end = address + size
        var pieces: [(start: UInt64, end: UInt64)] = []
        var cursor = address
        for range in state.freeRanges where range.start + range.length > cursor && range.start < end {
            if range.start > cursor { pieces.append((cursor, range.start)) }
            cursor = max(cursor, range.start + range.length)
        }
        if cursor < end { pieces.append((cursor, end)) }
        // Mapped pages only (the page-table walk skips what is not there: unmapping a 1 TiB
        // reservation visits nothing), gathered into runs.
        for piece in pieces {
            var run: FreeRange?
            space.tables.forEachLeaf(from: piece.start, to: piece.end, memory: space.memory) { page, _ in
                if let current = run, current.start + current.length == page {
                    run?.length += PageSize.bytes
                } else {
                    if let current = run { state.freeRanges.append(current) }
                    run = FreeRange(start: page, length: PageSize.bytes)
                }
            }
            if let run { state.freeRanges.append(run) }
        }
        state.freeRanges.sort { $0.start < $1.start }
        var merged: [FreeRange] = []
        for range in state.freeRanges {
            if let last = merged.last, last.start + last.length == range.start {
                merged[merged.count - 1].length += range.length
            } else {
                merged.append(range)
            }
        }
        state.freeRanges = merged
        return 0
    }

    // MARK: time

    private func clockGettime(clock: UInt64, _ memory: GuestMemoryView, into address: UInt64) throws -> Int64 {
        let clockID: clockid_t
        switch clock {
        case 0, 5, 8: clockID = CLOCK_REALTIME                // REALTIME, REALTIME_COARSE (once EINVAL), REALTIME_ALARM
        case 1, 4, 6, 7, 9: clockID = CLOCK_MONOTONIC        // MONOTONIC, _RAW, _COARSE, BOOTTIME, BOOTTIME_ALARM
        default: return -Int64(HostCallErrno.EINVAL)
        }
        var now = timespec()
        clock_gettime(clockID, &now)
        try memory.store(UInt64(now.tv_sec), at: address)
        try memory.store(UInt64(now.tv_nsec), at: address &+ 8)  // the store above proved address + 8 is in range
        return 0
    }
}

/// An unmapped anonymous range kept for reuse (`BuiltinHostCalls.State.freeRanges`).
struct FreeRange: Codable, Equatable {
    var start: UInt64
    var length: UInt64
}

/// A mapping placed at the guest's hint (`BuiltinHostCalls.State.placed`): `[start, end)`.
struct PlacedRange: Codable, Equatable {
    var start: UInt64
    var end: UInt64
}
