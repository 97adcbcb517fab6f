import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An alternate signal stack (`stack_t`): where handlers installed with SA_ONSTACK run.
struct SignalStack: Equatable, Codable {
    var base: UInt64 = 0
    var flags: UInt32 = 2  // SS_DISABLE
    var size: UInt64 = 0

    var enabled: Bool { flags & 2 == 0 && size > 0 }
    func contains(_ address: UInt64) -> Bool { enabled && address > base && address - base <= size }
}

/// A signal's installed action (the kernel's `struct sigaction`: handler, flags, restorer, mask).
struct SignalAction {
    static let ignore: UInt64 = 1
    static let onStack: UInt64 = 0x0800_0000, restorerFlag: UInt64 = 0x0400_0000
    static let noDefer: UInt64 = 0x4000_0000, resetHand: UInt64 = 0x8000_0000

    let handler: UInt64, flags: UInt64, restorer: UInt64, mask: UInt64

    init(bytes: [UInt8]) {
        func word(_ index: Int) -> UInt64 { UInt64(littleEndianBytes: bytes[index * 8..<index * 8 + 8]) }
        (handler, flags, restorer, mask) = (word(0), word(1), word(2), word(3))
    }

    /// A function to call (not SIG_DFL or SIG_IGN), with the restorer every x86-64 libc sets.
    var isHandler: Bool { handler > Self.ignore && flags & Self.restorerFlag != 0 && restorer != 0 }
}

/// Signals: actions (`rt_sigaction`), per-thread masks (`rt_sigprocmask`) and alternate stacks
/// (`sigaltstack`), signals sent with `kill`/`tkill`/`tgkill` and timers (`alarm`,
/// `setitimer(ITIMER_REAL)`). A signal with a handler is made pending on its thread and
/// delivered by the run loop (`Sandbox+Signals.swift`) before the thread next runs user code;
/// one whose default is to ignore it is dropped; any other ends the run as Linux would kill
/// the process. CPU exceptions become signals there too.
extension LinuxPersonality {
    /// Signals whose default action is to do nothing: SIGCHLD, SIGCONT, SIGURG, SIGWINCH.
    static let ignoredByDefault: Set<Int> = [17, 18, 23, 28]
    static let unblockable: UInt64 = 1 << 8 | 1 << 18  // SIGKILL, SIGSTOP (bit n-1)

    /// `tkill(tid, signal)` (`process` nil) and `tgkill(process, tid, signal)`.
    func threadKill(process: UInt64?, thread: UInt64, signal: UInt64) -> HostCallEffect {
        if let process, Int32(truncatingIfNeeded: process) != pid { return Self.fail(.noSuchProcess) }
        let tid = internalThreadID(Int32(truncatingIfNeeded: thread))
        guard let index = state.threads.firstIndex(where: { $0.tid == tid }) else { return Self.fail(.noSuchProcess) }
        return send(signal, to: index)
    }

    /// `alarm(seconds)`: SIGALRM after `seconds` (0 cancels); the seconds the last one had left.
    func alarm(seconds: UInt64) -> HostCallEffect {
        let left = state.alarmDeadline.map { ($0 &- min($0, monotonicNanoseconds()) + 999_999_999) / 1_000_000_000 } ?? 0
        state.alarmDeadline = seconds == 0 ? nil : monotonicNanoseconds() &+ min(seconds, 1 << 31) &* 1_000_000_000
        state.alarmInterval = 0
        return .value(Int64(left))
    }

    /// The installed action of `signal` (1-64).
    func action(_ signal: Int) -> SignalAction {
        SignalAction(bytes: state.signalActions[signal] ?? [UInt8](repeating: 0, count: 32))
    }

    /// Sends `signal` to thread `index`: pending when it has a handler, nothing when ignored,
    /// the end of the run when its default is to terminate.
    func send(_ signal: UInt64, to index: Int) -> HostCallEffect {
        guard signal != 0 else { return .value(0) }
        guard (1...64).contains(signal) else { return Self.fail(.invalidArgument) }
        let number = Int(signal), action = action(number)
        if action.isHandler {
            state.threads[index].pendingSignals |= UInt64(1) << (number - 1)
            return .value(0)
        }
        if action.handler == SignalAction.ignore || (action.handler == 0 && Self.ignoredByDefault.contains(number)) {
            return .value(0)
        }
        return .signal(Int32(number))
    }

    /// `pause()` (`mask` nil) and `rt_sigsuspend(mask)`: the thread waits, with `mask` blocked
    /// instead of its own, until a signal is delivered; always `EINTR`. Alone, it waits on the
    /// host until the vCPU is kicked, a host signal or SIGCHLD arrives, or the alarm is due; with
    /// other threads it re-checks as an I/O wait does.
    func suspend(_ memory: GuestMemoryView, mask address: UInt64?, size: UInt64) throws -> HostCallEffect {
        let index = state.currentThread
        var waitingMask = state.threads[index].signalMask
        if let address {
            guard size == 8 else { return Self.fail(.invalidArgument) }
            waitingMask = UInt64(littleEndianBytes: try memory.read(address, count: 8)) & ~Self.unblockable
        }
        func interrupted() -> HostCallEffect {
            if address != nil {
                state.threads[index].suspendedMask = state.threads[index].signalMask
                state.threads[index].signalMask = waitingMask
            }
            cancelWait()
            return Self.fail(.interrupted)
        }
        if state.threads[index].pendingSignals & ~waitingMask != 0 { return interrupted() }
        if hasOtherThreads {
            blockRestarting(until: nil)
            return .thread(.block)
        }
        while !(interrupter?.isInterrupted ?? false) && !hostSignalsPending() {
            let now = monotonicNanoseconds()
            if let alarm = state.alarmDeadline, alarm <= now { break }
            let slice = min(state.alarmDeadline.map { $0 - now } ?? .max, 20_000_000)
            var pause = timespec(tv_sec: 0, tv_nsec: Int(slice))
            nanosleep(&pause, nil)
        }
        return interrupted()
    }

    /// The first pending, unblocked signal of thread `index`, taken off its pending set.
    func takeDeliverableSignal(_ index: Int) -> Int? {
        let ready = state.threads[index].pendingSignals & ~state.threads[index].signalMask
        guard ready != 0 else { return nil }
        let number = ready.trailingZeroBitCount + 1
        state.threads[index].pendingSignals &= ~(UInt64(1) << (number - 1))
        return number
    }

    /// The shortest period a periodic timer re-arms with: each SIGALRM costs exits (its
    /// delivery, `rt_sigreturn`), so a 1 us interval would otherwise be due again before the
    /// guest ran one instruction of its own, and it would never make progress (a livelock until
    /// the deadline). Like timer slack, it only ever delays a signal.
    static let minimumTimerPeriod: UInt64 = 1_000_000

    /// SIGALRM due: pending on the main thread (process-directed), re-armed when periodic.
    func fireAlarmIfDue(now: UInt64) -> HostCallEffect? {
        guard let deadline = state.alarmDeadline, deadline <= now else { return nil }
        state.alarmDeadline = state.alarmInterval > 0 ? now &+ max(state.alarmInterval, Self.minimumTimerPeriod) : nil
        return send(14, to: 0)
    }

    func signalAction(_ signal: Int64, _ memory: GuestMemoryView, new: UInt64, old: UInt64, size: UInt64) throws -> HostCallEffect {
        guard size == 8, (1...64).contains(signal) else { return Self.fail(.invalidArgument) }
        let number = Int(signal)
        if new != 0 && (number == 9 || number == 19) { return Self.fail(.invalidArgument) }  // SIGKILL, SIGSTOP
        let previous = state.signalActions[number] ?? [UInt8](repeating: 0, count: 32)
        if new != 0 { state.signalActions[number] = try memory.read(new, count: 32) }
        if old != 0 { try memory.write(previous, to: old) }
        return .value(0)
    }

    func signalMask(how: UInt64, _ memory: GuestMemoryView, new: UInt64, old: UInt64, size: UInt64) throws -> HostCallEffect {
        guard size == 8 else { return Self.fail(.invalidArgument) }
        let index = state.currentThread
        let previous = state.threads[index].signalMask
        if new != 0 {
            let set = try memory.load(UInt64.self, at: new) & ~Self.unblockable
            switch how {
            case 0: state.threads[index].signalMask |= set
            case 1: state.threads[index].signalMask &= ~set
            case 2: state.threads[index].signalMask = set
            default: return Self.fail(.invalidArgument)
            }
        }
        if old != 0 { try memory.store(previous, at: old) }
        return .value(0)
    }

    func alternateStack(_ memory: GuestMemoryView, new: UInt64, old: UInt64) throws -> HostCallEffect {
        let index = state.currentThread
        let previous = state.threads[index].alternateStack
        if new != 0 {
            let bytes = try memory.read(new, count: 24)
            var stack = SignalStack(base: UInt64(littleEndianBytes: bytes[0..<8]), flags: UInt32(littleEndianBytes: bytes[8..<12]),
                                    size: UInt64(littleEndianBytes: bytes[16..<24]))
            guard stack.flags & ~UInt32(2 | 0x8000_0000) == 0 else { return Self.fail(.invalidArgument) }  // SS_DISABLE, SS_AUTODISARM
            if stack.flags & 2 == 0 {
                let (end, overflow) = stack.base.addingReportingOverflow(stack.size)
                guard stack.size >= 2048 else { return Self.fail(.noMemory) }  // MINSIGSTKSZ
                guard !overflow, end <= X86PageTables.userAddressLimit else { return Self.fail(.invalidArgument) }
            } else {
                stack = SignalStack()
            }
            state.threads[index].alternateStack = stack
        }
        if old != 0 {
            let flags: UInt32 = previous.enabled ? 0 : 2
            try memory.write(previous.base.littleEndianBytes + flags.littleEndianBytes + [0, 0, 0, 0] + previous.size.littleEndianBytes, to: old)
        }
        return .value(0)
    }

    /// setitimer(ITIMER_REAL): SIGALRM after `it_value`, then every `it_interval`.
    func setTimer(which: UInt64, _ memory: GuestMemoryView, new: UInt64, old: UInt64) throws -> HostCallEffect {
        guard which == 0 else { return Self.fail(.invalidArgument) }  // ITIMER_VIRTUAL/PROF: not offered
        func microseconds(_ seconds: UInt64, _ micro: UInt64) -> UInt64? {
            guard seconds < 1 << 31, micro < 1_000_000 else { return nil }
            return seconds * 1_000_000 + micro
        }
        if old != 0 {
            let left = state.alarmDeadline.map { ($0 &- min($0, monotonicNanoseconds())) / 1000 } ?? 0
            let interval = state.alarmInterval / 1000
            try memory.write((interval / 1_000_000).littleEndianBytes + (interval % 1_000_000).littleEndianBytes
                             + (left / 1_000_000).littleEndianBytes + (left % 1_000_000).littleEndianBytes, to: old)
        }
        if new != 0 {
            let bytes = try memory.read(new, count: 32)
            func word(_ index: Int) -> UInt64 { UInt64(littleEndianBytes: bytes[index * 8..<index * 8 + 8]) }
            guard let interval = microseconds(word(0), word(1)), let value = microseconds(word(2), word(3)) else {
                return Self.fail(.invalidArgument)
            }
            state.alarmDeadline = value == 0 ? nil : monotonicNanoseconds() &+ value * 1000
            state.alarmInterval = interval * 1000
        }
        return .value(0)
    }
}
