import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A guest thread. All threads share the one vCPU: the running one's registers are in the vCPU,
/// the others' are kept here (general, special and x87/SSE/AVX registers) until they run again.
struct GuestThread: Codable {
    /// What a thread that is not running waits for.
    enum Wait: Equatable, Codable {
        /// Nothing: it runs when its turn comes.
        case runnable
        /// A futex word (guest address) and the bitset it waits with.
        case futex(address: UInt64, bitset: UInt32)
        /// Time alone (`nanosleep` with other threads around).
        case sleep
        /// A file call that could not complete yet (poll, epoll_wait, an empty pipe): it runs
        /// again when woken (`restart`), or when `deadline` (a re-check) comes.
        case io
    }

    let tid: Int32
    var wait = Wait.runnable
    /// Monotonic nanoseconds at which a wait ends on its own (futex timeout, sleep), if any.
    var deadline: UInt64?
    /// `rax` when it runs again: what its blocking call returns (set by whoever ends the wait).
    var result: Int64 = 0
    /// CLONE_CHILD_CLEARTID / set_tid_address: zeroed and woken when the thread exits.
    var clearChildTID: UInt64 = 0
    /// Whether its system call runs again (an I/O wait that ended): `rewind` is for the run
    /// loop (put it back on its `syscall` instruction when it is next loaded, once), `restart`
    /// for the call when it comes again (keep its timeout).
    var restart = false
    var rewind = false
    /// A restarted call's own timeout (monotonic ns), kept across its re-runs.
    var restartDeadline: UInt64?
    /// Whether `result` goes into rax when it runs again (it stopped in a system call, not by
    /// preemption in the middle of its code).
    var resultPending = false
    /// Blocked signals, signals waiting for delivery, and the alternate signal stack (`stack_t`).
    var signalMask: UInt64 = 0
    var pendingSignals: UInt64 = 0
    /// The mask `rt_sigsuspend` replaced, put back when its signal's handler returns (it goes
    /// into the frame's `uc_sigmask`) or at once when no handler ran.
    var suspendedMask: UInt64?
    var alternateStack = SignalStack()
    /// The x87/SSE/AVX state each signal handler interrupted, innermost last, by frame address:
    /// `rt_sigreturn` puts it back.
    var signalFrames: [SignalFrameRecord] = []
    /// Saved vCPU state while it does not run; nil for the running thread.
    var registers: GuestRegisters?
    var specialRegisters: RawBytes<SpecialRegisters>?
    var floatingPoint: FloatingPointState?
}

/// The x87/SSE/AVX state a signal handler interrupted, by the address of its frame.
struct SignalFrameRecord: Codable {
    var frame: UInt64
    var floatingPoint: FloatingPointState
}

/// What the run loop must do to the vCPU after a threading call (the personality cannot touch it).
enum ThreadAction: Equatable {
    /// clone: start thread `tid` from the caller's state, with this stack and TLS; the caller
    /// gets `tid`.
    case spawn(tid: Int32, stack: UInt64, tls: UInt64?)
    /// The running thread waits (its `wait`/`deadline` are set): run another one.
    case block
    /// The running thread stays runnable but lets the others run first.
    case yield
    /// The running thread is gone (its record removed): run another one, or end the run with
    /// this status when it was the last.
    case exit(status: Int32)
    /// rt_sigreturn: the running thread's registers come back from its signal frame.
    case signalReturn

    /// The result column of `--trace-syscalls` (as strace shows these calls).
    var traced: String {
        switch self {
        case .spawn(let tid, _, _): return "\(tid)"
        case .block: return "? (waits)"
        case .yield: return "0"
        case .exit: return "?"
        case .signalReturn: return "? (returns from the handler)"
        }
    }
}

/// Threads on one vCPU: `clone`/`clone3` with the flags threads use, `futex`, `sched_yield`,
/// `gettid`, `set_tid_address`, a thread's `exit`. Scheduling (saving and restoring vCPU
/// state, time slices, waiting for the earliest deadline) is the run loop's
/// (`Sandbox+Threads.swift`).
extension LinuxPersonality {
    /// The flags a thread's `clone` carries (glibc, Go, Rust): VM, FS, FILES, SIGHAND, THREAD,
    /// SYSVSEM, SETTLS, PARENT_SETTID, CHILD_CLEARTID, CHILD_SETTID, and DETACHED (musl passes it;
    /// Linux has ignored it since 2.6.2); nothing else is offered.
    static let threadFlags: UInt64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x80000 | 0x100000 | 0x200000 | 0x400000
        | 0x1000000
    static let requiredThreadFlags: UInt64 = 0x100 | 0x800 | 0x10000  // CLONE_VM | CLONE_SIGHAND | CLONE_THREAD

    /// `clone3(struct clone_args *, size)`: a thread, as `clone` makes one (no exit signal, a stack).
    func clone3(_ call: HostCall) throws -> HostCallEffect {
        guard call[1] >= 64, call[1] <= 4096 else { return Self.fail(.invalidArgument) }
        let words = try call.memory.read(call[0], count: 64)
        func word(_ index: Int) -> UInt64 { UInt64(littleEndianBytes: words[index * 8..<index * 8 + 8]) }
        // flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls
        let (top, overflow) = word(5).addingReportingOverflow(word(6))
        guard !overflow, word(4) <= 64 else { return Self.fail(.invalidArgument) }
        if word(0) & Self.cloneThread == 0 {  // a process (posix_spawn's CLONE_VM | CLONE_VFORK)
            return forkProcess(ForkRequest(flags: word(0) | word(4), stack: word(5) == 0 ? 0 : top, parentTID: word(3),
                                           childTID: word(2), tls: word(0) & Self.cloneSetTLS != 0 ? word(7) : nil))
        }
        guard word(4) == 0, word(5) != 0 else { return Self.fail(.invalidArgument) }  // a thread: no exit signal, a stack
        return try clone(flags: word(0), stack: top, parentTID: word(3), childTID: word(2), tls: word(7), call.memory)
    }

    /// `set_tid_address(address)`: where the thread's id is cleared (and a futex woken) at its exit.
    func setTIDAddress(_ address: UInt64) -> HostCallEffect {
        state.threads[state.currentThread].clearChildTID = address
        return .value(Int64(publicThreadID(currentThread.tid)))
    }

    /// Whether the guest has more than one thread (calls that block then let the others run).
    var hasOtherThreads: Bool { state.threads.count > 1 }

    var currentThread: GuestThread { state.threads[state.currentThread] }

    /// A new thread sharing everything, or a process (`forkProcess`) for a clone without
    /// `CLONE_THREAD`; `EINVAL` for flags threads do not use, `EAGAIN` past `maximumThreads`.
    func clone(flags: UInt64, stack: UInt64, parentTID: UInt64, childTID: UInt64, tls: UInt64,
               _ memory: GuestMemoryView) throws -> HostCallEffect {
        // A process (fork, vfork, a clone without a shared address space).
        if flags & Self.cloneThread == 0 {
            return forkProcess(ForkRequest(flags: flags, stack: stack, parentTID: parentTID, childTID: childTID,
                                           tls: flags & Self.cloneSetTLS != 0 ? tls : nil))
        }
        guard flags & Self.requiredThreadFlags == Self.requiredThreadFlags else { return Self.fail(.invalidArgument) }
        guard flags & ~Self.threadFlags == 0, stack != 0, stack < X86PageTables.userAddressLimit else {
            return Self.fail(.invalidArgument)
        }
        guard state.threads.count < maximumThreads else { return Self.fail(.resourceTemporarilyUnavailable) }
        let setTLS = flags & 0x80000 != 0
        guard !setTLS || tls < X86PageTables.userAddressLimit else { return Self.fail(.notPermitted) }
        // Thread ids come from the process table's id space once there are processes (no thread
        // may have a pid's number).
        let tid = processes?.allocateID() ?? state.nextThreadID
        if flags & 0x100000 != 0 { try memory.store(UInt32(bitPattern: tid), at: parentTID) }  // CLONE_PARENT_SETTID
        if flags & 0x1000000 != 0 { try memory.store(UInt32(bitPattern: tid), at: childTID) } // CLONE_CHILD_SETTID
        state.nextThreadID = max(state.nextThreadID, tid) + 1
        var thread = GuestThread(tid: tid)
        thread.signalMask = currentThread.signalMask  // inherited; the alternate stack is not
        if flags & 0x200000 != 0 { thread.clearChildTID = childTID }                          // CLONE_CHILD_CLEARTID
        state.threads.append(thread)
        return .thread(.spawn(tid: tid, stack: stack, tls: setTLS ? tls : nil))
    }

    /// The running thread ends: its CLEARTID word is zeroed and one waiter on it woken (how
    /// `pthread_join` learns), and the run loop runs another thread.
    func exitThread(status: Int32, _ memory: GuestMemoryView) throws -> HostCallEffect {
        let thread = currentThread
        if thread.clearChildTID != 0 {
            try? memory.store(UInt32(0), at: thread.clearChildTID)
            _ = wake(address: thread.clearChildTID, count: 1, bitset: .max)
        }
        state.threads.remove(at: state.currentThread)
        if state.currentThread >= state.threads.count { state.currentThread = 0 }
        return .thread(.exit(status: status))
    }

    /// futex: WAIT and WAIT_BITSET block the running thread until a WAKE, or their timeout
    /// (relative on CLOCK_MONOTONIC for WAIT, absolute on the flag's clock for WAIT_BITSET);
    /// WAKE and WAKE_BITSET wake up to `val` waiters. A WAIT nothing can end is reported by the
    /// run loop as a deadlock. REQUEUE, WAKE_OP and PI operations: `ENOSYS`.
    func futex(_ call: HostCall, _ memory: GuestMemoryView) throws -> HostCallEffect {
        let operation = call[1] & 0x7f  // without FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256)
        let realtime = call[1] & 256 != 0
        switch operation {
        case 1, 10:                                                     // WAKE, WAKE_BITSET
            let bitset = operation == 10 ? UInt32(truncatingIfNeeded: call[5]) : .max
            guard bitset != 0 else { return Self.fail(.invalidArgument) }
            if let word = sharedFutexWord(call[0], operation: call[1]) {
                return sharedFutexWake(word, count: Int(min(call[2] & 0x7fff_ffff, 1 << 20)), bitset: bitset)
            }
            return .value(Int64(wake(address: call[0], count: Int(min(call[2] & 0x7fff_ffff, 1 << 20)), bitset: bitset)))
        case 0, 9:                                                      // WAIT, WAIT_BITSET
            guard call[0] % 4 == 0 else { return Self.fail(.invalidArgument) }
            let bitset = operation == 9 ? UInt32(truncatingIfNeeded: call[5]) : .max
            guard bitset != 0 else { return Self.fail(.invalidArgument) }
            if let shared = sharedFutexWord(call[0], operation: call[1]) {
                return try sharedFutexWait(shared, address: call[0], expected: UInt32(truncatingIfNeeded: call[2]), bitset: bitset) {
                    guard call[3] != 0 else { return .success(nil) }
                    return try deadlineNanoseconds(memory, timeout: call[3], absolute: operation == 9,
                                                   realtime: realtime && operation == 9).map { Optional($0) }
                }
            }
            let word = try memory.load(UInt32.self, at: call[0])
            guard word == UInt32(truncatingIfNeeded: call[2]) else { return Self.fail(.resourceTemporarilyUnavailable) }
            var deadline: UInt64?
            if call[3] != 0 {
                switch try deadlineNanoseconds(memory, timeout: call[3], absolute: operation == 9, realtime: realtime && operation == 9) {
                case .failure(let error): return Self.fail(error)
                case .success(let value): deadline = value
                }
            }
            state.threads[state.currentThread].wait = .futex(address: call[0], bitset: bitset)
            state.threads[state.currentThread].deadline = deadline
            state.threads[state.currentThread].result = 0
            return .thread(.block)
        default: return Self.fail(.noFunction)
        }
    }

    /// Wakes up to `count` threads waiting on `address` with a bitset sharing a bit with `bitset`.
    func wake(address: UInt64, count: Int, bitset: UInt32) -> Int {
        var woken = 0
        for index in state.threads.indices where woken < count {
            guard case .futex(let waited, let mask) = state.threads[index].wait, waited == address, mask & bitset != 0 else { continue }
            state.threads[index].wait = .runnable
            state.threads[index].deadline = nil
            state.threads[index].result = 0
            woken += 1
        }
        return woken
    }

    /// nanosleep with other threads: the running thread waits for its deadline while they run.
    func sleepBlocking(_ memory: GuestMemoryView, request: UInt64, absolute: Bool, clock: UInt64) throws -> HostCallEffect {
        switch try deadlineNanoseconds(memory, timeout: request, absolute: absolute, realtime: clock == 0) {
        case .failure(let error): return Self.fail(error)
        case .success(let deadline):
            state.threads[state.currentThread].wait = .sleep
            state.threads[state.currentThread].deadline = deadline
            state.threads[state.currentThread].result = 0
            return .thread(.block)
        }
    }

    /// A guest `timespec` as a deadline in monotonic nanoseconds (an absolute CLOCK_REALTIME one
    /// converted at the current offset between the clocks).
    func deadlineNanoseconds(_ memory: GuestMemoryView, timeout: UInt64, absolute: Bool,
                             realtime: Bool) throws -> Result<UInt64, Errno> {
        let words = try memory.read(timeout, count: 16)
        let seconds = Int64(bitPattern: UInt64(littleEndianBytes: words[0..<8]))
        let nanoseconds = Int64(bitPattern: UInt64(littleEndianBytes: words[8..<16]))
        guard seconds >= 0, (0..<1_000_000_000).contains(nanoseconds) else { return .failure(.invalidArgument) }
        let requested = seconds > Int64.max / 2_000_000_000 ? UInt64(Int64.max / 2) : UInt64(seconds * 1_000_000_000 + nanoseconds)
        let now = monotonicNanoseconds()
        guard absolute else { return .success(now &+ requested) }
        var clock = timespec()
        clock_gettime(realtime ? CLOCK_REALTIME : CLOCK_MONOTONIC, &clock)
        let clockNow = UInt64(clock.tv_sec) &* 1_000_000_000 &+ UInt64(clock.tv_nsec)
        return .success(requested <= clockNow ? now : now &+ (requested - clockNow))
    }
}
