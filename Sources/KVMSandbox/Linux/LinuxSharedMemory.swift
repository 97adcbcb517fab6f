import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Shared memory between the processes of a sandbox: `mmap(MAP_SHARED)` of anonymous memory
/// or of a file in an in-memory directory (`/dev/shm`, where glibc's `sem_open` and `shm_open`
/// put theirs) is a `SharedMemoryObject` overlaid on contiguous guest-physical pages of this
/// VM, and a `fork` overlays the same object at the same place in the child. Stores are seen
/// across processes at once; futex waits on such memory (without FUTEX_PRIVATE_FLAG, as Linux
/// keys them) queue on the object, where a wake from any process finds them.
///
/// Not offered: shared writable mappings of host files (`ENODEV`: a host file changed behind
/// the disk quota and the grants' bookkeeping), `MAP_FIXED` shared mappings (`ENODEV`),
/// executable shared memory (`EACCES`: W^X holds across processes too), and coherence between
/// a mapped in-memory file and its `read`/`write` (the mapping starts with the file's bytes;
/// processes mapping the same file share one object).
extension LinuxPersonality {
    /// `mmap(MAP_SHARED)` of anonymous memory (`path` nil) or of the in-memory file `path`.
    func mapShared(_ hint: UInt64, length: UInt64, protection: UInt64, flags: UInt64, path: String?, offset: UInt64) -> HostCallEffect {
        guard protection & ~7 == 0, offset % PageSize.bytes == 0, length > 0 else { return Self.fail(.invalidArgument) }
        guard protection & 4 == 0 else { return refuseExecutable() }
        guard flags & (0x10 | 0x100000) == 0 else { return Self.fail(Errno(rawValue: 19)) }  // ENODEV: no MAP_FIXED here
        guard length <= space.memory.size, let size = PageSize.alignUp(length),
              offset <= GuestMemory.maximumSize - size else { return Self.fail(.noMemory) }
        // PROT_NONE: a reservation, as a private one (nothing to share until it has pages).
        if protection == 0 { return .value(builtins.mmap(length: size, protection: 0, flags: 0x22, hint: hint)) }
        let object: SharedMemoryObject
        if let path {
            guard let found = state.memoryFiles.sharedObject(path, covering: offset + size) else { return Self.fail(.noMemory) }
            object = found
        } else {
            do { object = try SharedMemoryObject(size: size) } catch { return Self.fail(error) }
        }
        let reserved = builtins.mmap(length: size, protection: 0, flags: 0x22, hint: hint)
        guard reserved >= 0 else { return .value(reserved) }
        let start = UInt64(reserved)
        let physical: UInt64
        do {
            physical = try space.mapNewContiguous(start, length: size, Self.permissions(protection))
        } catch {
            _ = try? builtins.handle(HostCall(number: 11, arguments: [start, size, 0, 0, 0, 0], memory: GuestMemoryView(space: space)))
            return Self.fail(.noMemory)
        }
        if let error = space.memory.overlay(physical, count: size, with: object, at: offset) {
            _ = try? builtins.handle(HostCall(number: 11, arguments: [start, size, 0, 0, 0, 0], memory: GuestMemoryView(space: space)))
            return Self.fail(error)
        }
        return .value(Int64(start))
    }

    /// The guest-physical runs behind the shared pages mapped in `[address, address + size)`.
    private func sharedRuns(_ address: UInt64, _ size: UInt64) -> [(physical: UInt64, count: UInt64)] {
        guard !space.memory.overlays.isEmpty else { return [] }
        var runs: [(physical: UInt64, count: UInt64)] = []
        space.tables.forEachLeaf(from: address, to: address &+ size, memory: space.memory) { page, _ in
            guard let physical = space.tables.translateForHost(page, memory: space.memory),
                  space.memory.sharedObject(at: physical) != nil else { return }
            if let last = runs.last, last.physical + last.count == physical { runs[runs.count - 1].count += PageSize.bytes }
            else { runs.append((physical, PageSize.bytes)) }
        }
        return runs
    }

    /// Whether any page mapped in `[address, address + size)` is shared memory.
    func containsSharedPages(_ address: UInt64, _ size: UInt64) -> Bool { !sharedRuns(address, size).isEmpty }

    /// Gives the shared pages in `[address, address + size)` their private backing back (before
    /// they are unmapped, mapped over, or reused): false when the host could not (`ENOMEM`).
    func releaseSharedPages(_ address: UInt64, _ size: UInt64) -> Bool {
        for run in sharedRuns(address, size) where !space.memory.removeOverlays(run.physical, count: run.count) { return false }
        return true
    }

    /// The shared object and offset a process-shared futex word at `address` lives in, if any.
    func sharedFutexWord(_ address: UInt64, operation: UInt64) -> (object: SharedMemoryObject, offset: UInt64)? {
        guard operation & 128 == 0, !space.memory.overlays.isEmpty,
              let physical = space.tables.translateForHost(address, memory: space.memory) else { return nil }
        return space.memory.sharedObject(at: physical)
    }

    /// FUTEX_WAIT(_BITSET) on shared memory: a ticket in the object's queue, and the thread
    /// waits for I/O; it runs the call again when its process is woken (or at each re-check), and
    /// the call then collects the ticket, times out, or waits on.
    func sharedFutexWait(_ word: (object: SharedMemoryObject, offset: UInt64), address: UInt64, expected: UInt32,
                         bitset: UInt32, deadline: () throws -> Result<UInt64?, Errno>) throws -> HostCallEffect {
        let tid = currentThread.tid
        if let waiting = sharedWaits[tid] {
            sharedWaits[tid] = nil
            if callIsRerun, waiting.object === word.object {
                switch waiting.object.futexes.collect(waiting.ticket) {
                case true?: return .value(0)
                case false?:
                    let restartDeadline = state.threads[state.currentThread].restartDeadline
                    if let restartDeadline, restartDeadline <= monotonicNanoseconds() {
                        waiting.object.futexes.cancel(waiting.ticket)
                        return Self.fail(.timedOut)
                    }
                    sharedWaits[tid] = waiting
                    blockRestarting(until: restartDeadline)
                    return .thread(.block)
                case nil: break
                }
            } else {
                waiting.object.futexes.cancel(waiting.ticket)  // a wait a signal ended: withdrawn
            }
        }
        let memory = GuestMemoryView(space: space)
        guard try memory.load(UInt32.self, at: address) == expected else { return Self.fail(.resourceTemporarilyUnavailable) }
        var until: UInt64?
        switch try deadline() {
        case .failure(let error): return Self.fail(error)
        case .success(let value): until = value
        }
        guard let doorbell = processDoorbell(),
              let ticket = word.object.futexes.enqueue(offset: word.offset, bitset: bitset, doorbell: doorbell) else {
            return Self.fail(.resourceTemporarilyUnavailable)
        }
        // A waker changes the word before it wakes: a change since the first look is a wake
        // this ticket may have missed.
        guard try memory.load(UInt32.self, at: address) == expected else {
            word.object.futexes.cancel(ticket)
            return Self.fail(.resourceTemporarilyUnavailable)
        }
        sharedWaits[tid] = (word.object, ticket)
        blockRestarting(until: until)
        return .thread(.block)
    }

    /// FUTEX_WAKE(_BITSET) on shared memory: wakes up to `count` waiters of any process; this
    /// process's own woken threads run their calls again at once.
    func sharedFutexWake(_ word: (object: SharedMemoryObject, offset: UInt64), count: Int, bitset: UInt32) -> HostCallEffect {
        let woken = word.object.futexes.wake(offset: word.offset, count: count, bitset: bitset)
        if woken > 0 {
            for index in state.threads.indices where state.threads[index].wait == .io {
                guard let waiting = sharedWaits[state.threads[index].tid], waiting.object === word.object else { continue }
                state.threads[index].wait = .runnable
                state.threads[index].deadline = nil
                state.threads[index].restart = true
                state.threads[index].rewind = true
            }
        }
        return .value(Int64(woken))
    }

    /// Withdraws every shared futex wait of this process (it ended, or was reset).
    func cancelSharedWaits() {
        for waiting in sharedWaits.values { waiting.object.futexes.cancel(waiting.ticket) }
        sharedWaits.removeAll()
    }

    /// This process's doorbell, made at its first wait on shared memory.
    private func processDoorbell() -> Doorbell? {
        if let doorbell { return doorbell }
        doorbell = Doorbell()
        return doorbell
    }
}
