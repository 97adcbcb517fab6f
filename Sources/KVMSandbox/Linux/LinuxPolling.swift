import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Readiness: `epoll_create1`/`epoll_ctl`/`epoll_wait`/`epoll_pwait`, `poll`/`ppoll` and
/// `eventfd2`, over the guest's own pipes and eventfds, its standard streams and (always ready)
/// files. Go's runtime and libuv make these at start-up even without sockets.
///
/// A call that must wait (nothing ready, a timeout left, or a blocking read of an empty pipe
/// while other threads could fill it) blocks its thread and is *restarted* when something it
/// may be waiting for happens (a pipe or eventfd written or closed) or every 10 ms, so its
/// answer is always computed afresh; when its own timeout passes it returns 0.
extension LinuxPersonality {
    /// `ERESTARTSYS`: a file call that would block, to be restarted when it may succeed.
    static let restart = Errno(rawValue: 512)
    /// How often a restartable wait re-checks when nothing wakes it (a host stdin becoming readable).
    static let recheckInterval: UInt64 = 10_000_000
    /// The most events one `epoll_wait` reports and pollfds one `poll` takes.
    static let pollLimit = 4096

    /// `epoll_create(size)` (`flags` nil) and `epoll_create1(flags)`.
    func epollCreate(size: UInt64?, flags: UInt64) -> HostCallEffect {
        if let size, Int64(bitPattern: size) <= 0 { return Self.fail(.invalidArgument) }
        guard flags & ~UInt64(O_CLOEXEC) == 0 else { return Self.fail(.invalidArgument) }
        let id = state.nextObject
        guard let fd = state.files.install(OpenFile(kind: .epoll(id: id), statusFlags: O_RDWR, path: "anon_inode:[eventpoll]"),
                                           closeOnExec: flags & UInt64(O_CLOEXEC) != 0) else { return Self.fail(.tooManyOpenFiles) }
        state.nextObject += 1
        state.epolls[id] = [:]
        return .value(Int64(fd))
    }

    /// `epoll_wait`/`epoll_pwait(epfd, events, maximum, timeout ms, ...)`, or `epoll_pwait2`
    /// (`timespec`: its timeout is a `struct timespec *`).
    func epollWait(_ call: HostCall, timespec: Bool) throws -> HostCallEffect {
        guard case .success(let timeout) = try Self.waitTimeout(call, argument: 3, timespec: timespec) else { return Self.fail(.invalidArgument) }
        return try epollWait(call.descriptor(0), events: call[1], maximum: Int64(Int32(truncatingIfNeeded: call[2])),
                             timeoutMilliseconds: timeout, call.memory)
    }

    /// `poll(fds, count, timeout ms)`, or `ppoll` (`timespec`: its timeout is a `struct timespec *`).
    func poll(_ call: HostCall, timespec: Bool) throws -> HostCallEffect {
        guard case .success(let timeout) = try Self.waitTimeout(call, argument: 2, timespec: timespec) else { return Self.fail(.invalidArgument) }
        return try poll(call[0], count: call[1], timeoutMilliseconds: timeout, call.memory)
    }

    /// The timeout in argument `argument` in milliseconds (nil: wait forever): a `struct
    /// timespec *` (`timespec`), else an `int` of milliseconds where a negative one is forever.
    static func waitTimeout(_ call: HostCall, argument: Int, timespec: Bool) throws -> Result<Int64?, Errno> {
        if timespec { return try timeoutMilliseconds(call.memory, timespecAt: call[argument]) }
        let value = Int64(Int32(truncatingIfNeeded: call[argument]))
        return .success(value < 0 ? nil : value)
    }

    /// `select(count, readfds, writefds, exceptfds, struct timeval *)`, or `pselect6` (`timespec`:
    /// its timeout is a `struct timespec *`; the signal mask it may carry is not applied, as
    /// `ppoll`'s). Answered from the same readiness as `poll`; the sets are written back only
    /// when the call returns (a call that waits is restarted with the guest's own sets), and
    /// the timeout is not updated with the time left.
    func select(_ call: HostCall, timespec: Bool) throws -> HostCallEffect {
        let memory = call.memory
        let count = Int64(Int32(truncatingIfNeeded: call[0]))
        guard count >= 0, count <= Int64(FileTable.limit) else { return Self.fail(.invalidArgument) }
        let words = Int((count + 63) / 64)
        // The three sets as 64-bit words (an absent set: none), bits at or past `count` ignored.
        var sets = try [call[1], call[2], call[3]].map { address -> [UInt64]? in
            guard address != 0 else { return nil }
            let bytes = try memory.read(address, count: words * 8)
            return (0..<words).map { UInt64(littleEndianBytes: bytes[$0 * 8..<$0 * 8 + 8]) }
        }
        var timeout: Int64?
        if call[4] != 0 {
            let raw = try memory.read(call[4], count: 16)
            let seconds = Int64(bitPattern: UInt64(littleEndianBytes: raw[0..<8]))
            let fraction = Int64(bitPattern: UInt64(littleEndianBytes: raw[8..<16]))
            let perSecond: Int64 = timespec ? 1_000_000_000 : 1_000_000
            guard seconds >= 0, (0..<perSecond).contains(fraction) else { return Self.fail(.invalidArgument) }
            timeout = seconds > Int64.max / 2_000 ? Int64.max / 2 : seconds * 1000 + (fraction * 1000 + perSecond - 1) / perSecond
        }
        // POLLIN|POLLHUP|POLLERR make a descriptor readable, POLLOUT|POLLERR writable, POLLPRI exceptional.
        let conditions: [UInt32] = [0x1 | 0x10 | 0x8, 0x4 | 0x8, 0x2]
        var ready = 0
        var results = sets.map { $0.map { [UInt64](repeating: 0, count: $0.count) } }
        for fd in 0..<Int(count) {
            let (word, bit) = (fd / 64, UInt64(1) << UInt64(fd % 64))
            guard sets.contains(where: { ($0?[word] ?? 0) & bit != 0 }) else { continue }
            guard state.files[Int64(fd)] != nil else { return Self.fail(.badFileDescriptor) }
            let revents = readiness(Int64(fd), wanted: 0x1 | 0x2 | 0x4 | 0x18)
            for set in 0..<3 where (sets[set]?[word] ?? 0) & bit != 0 && revents & conditions[set] != 0 {
                results[set]?[word] |= bit
                ready += 1
            }
        }
        guard ready > 0 || timeout == 0 else { return waitForReadiness(timeout) }
        sets = results
        for (address, set) in zip([call[1], call[2], call[3]], sets) {
            guard let set else { continue }
            try memory.write([UInt8](littleEndianWords: set), to: address)
        }
        return .value(Int64(ready))
    }

    /// A `struct timespec *` timeout in milliseconds: nil for a null pointer (wait forever);
    /// a failure for a negative or malformed one.
    static func timeoutMilliseconds(_ memory: GuestMemoryView, timespecAt address: UInt64) throws -> Result<Int64?, Errno> {
        guard address != 0 else { return .success(nil) }
        let words = try memory.read(address, count: 16)
        let seconds = Int64(bitPattern: UInt64(littleEndianBytes: words[0..<8]))
        let nanoseconds = Int64(bitPattern: UInt64(littleEndianBytes: words[8..<16]))
        guard seconds >= 0, (0..<1_000_000_000).contains(nanoseconds) else { return .failure(.invalidArgument) }
        return .success(seconds > Int64.max / 2_000 ? Int64.max / 2 : seconds * 1000 + nanoseconds / 1_000_000)
    }

    /// `eventfd(initial)` (`flags` 0) and `eventfd2(initial, flags)`.
    func eventCounterCreate(initial: UInt64, flags: UInt64) -> HostCallEffect {
        let known = UInt64(O_CLOEXEC) | UInt64(O_NONBLOCK) | 1  // EFD_SEMAPHORE
        guard flags & ~known == 0 else { return Self.fail(.invalidArgument) }
        let id = state.nextObject
        let status = flags & UInt64(O_NONBLOCK) != 0 ? O_NONBLOCK : 0
        guard let fd = state.files.install(OpenFile(kind: .eventCounter(id: id), statusFlags: O_RDWR | status, path: "anon_inode:[eventfd]"),
                                           closeOnExec: flags & UInt64(O_CLOEXEC) != 0) else { return Self.fail(.tooManyOpenFiles) }
        state.nextObject += 1
        state.eventCounters[id] = EventCounter(value: UInt64(UInt32(truncatingIfNeeded: initial)), semaphore: flags & 1 != 0)
        return .value(Int64(fd))
    }

    func epollControl(_ epfd: Int64, operation: UInt64, fd: Int64, event: UInt64, _ memory: GuestMemoryView) throws -> HostCallEffect {
        guard let epoll = state.files[epfd], case .epoll(let id) = epoll.kind else {
            return Self.fail(state.files[epfd] == nil ? .badFileDescriptor : .invalidArgument)
        }
        guard let target = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        guard fd != epfd else { return Self.fail(.invalidArgument) }
        switch target.kind {
        case .host, .directory, .memoryFile, .memory, .null, .zero, .random: return Self.fail(.notPermitted)  // as Linux: regular files
        default: break
        }
        let key = Int32(fd)
        var set = state.epolls[id] ?? [:]
        switch operation {
        case 1, 3:                                      // ADD, MOD
            if operation == 1, set[key] != nil { return Self.fail(.fileExists) }
            if operation == 3, set[key] == nil { return Self.fail(.noSuchFileOrDirectory) }
            let bytes = try memory.read(event, count: 12)
            set[key] = EpollInterest(events: UInt32(littleEndianBytes: bytes[0..<4]), data: UInt64(littleEndianBytes: bytes[4..<12]))
        case 2:                                         // DEL
            guard set.removeValue(forKey: key) != nil else { return Self.fail(.noSuchFileOrDirectory) }
        default: return Self.fail(.invalidArgument)
        }
        state.epolls[id] = set
        return .value(0)
    }

    func epollWait(_ epfd: Int64, events: UInt64, maximum: Int64, timeoutMilliseconds: Int64?, _ memory: GuestMemoryView) throws -> HostCallEffect {
        guard let epoll = state.files[epfd], case .epoll(let id) = epoll.kind else {
            return Self.fail(state.files[epfd] == nil ? .badFileDescriptor : .invalidArgument)
        }
        guard maximum > 0, maximum <= Int64(Self.pollLimit) else { return Self.fail(.invalidArgument) }
        var ready: [UInt8] = []
        var count = 0
        for (fd, interest) in (state.epolls[id] ?? [:]).sorted(by: { $0.key < $1.key }) where count < maximum {
            let revents = readiness(Int64(fd), wanted: interest.events | 0x18)  // ERR and HUP always
            guard revents != 0 else { continue }
            ready += revents.littleEndianBytes + interest.data.littleEndianBytes
            count += 1
        }
        if count > 0 {
            try memory.write(ready, to: events)
            return .value(Int64(count))
        }
        return waitForReadiness(timeoutMilliseconds)
    }

    func poll(_ address: UInt64, count: UInt64, timeoutMilliseconds: Int64?, _ memory: GuestMemoryView) throws -> HostCallEffect {
        guard count <= UInt64(Self.pollLimit) else { return Self.fail(.invalidArgument) }
        var entries = try memory.read(address, count: Int(count) * 8)
        var readyCount = 0
        for index in 0..<Int(count) {
            let at = index * 8
            let fd = Int64(Int32(bitPattern: UInt32(littleEndianBytes: entries[at..<at + 4])))
            let wanted = UInt32(UInt16(littleEndianBytes: entries[at + 4..<at + 6]))
            var revents: UInt32 = 0
            if fd >= 0 { revents = state.files[fd] == nil ? 0x20 : readiness(fd, wanted: wanted | 0x18) }  // POLLNVAL
            entries[at + 6] = UInt8(truncatingIfNeeded: revents)
            entries[at + 7] = UInt8(truncatingIfNeeded: revents >> 8)
            if revents != 0 { readyCount += 1 }
        }
        if readyCount > 0 || count == 0 && timeoutMilliseconds == 0 {
            try memory.write(entries, to: address)
            return .value(Int64(readyCount))
        }
        return waitForReadiness(timeoutMilliseconds)
    }

    /// Nothing ready: 0 at once for a zero timeout, else the thread waits (and the call is
    /// restarted) until its timeout.
    func waitForReadiness(_ timeoutMilliseconds: Int64?) -> HostCallEffect {
        if timeoutMilliseconds == 0 { return .value(0) }
        let limit = timeoutMilliseconds.map { monotonicNanoseconds() &+ UInt64(min($0, Int64(UInt32.max))) &* 1_000_000 }
        // A restarted call keeps the timeout it started with.
        let timeout = currentThread.restartDeadline ?? limit
        if let timeout, timeout <= monotonicNanoseconds() { return .value(0) }
        blockRestarting(until: timeout)
        return .thread(.block)
    }

    /// Makes the running thread wait for I/O, to re-run its call when woken or every
    /// `recheckInterval`, and to return 0 once `deadline` passes.
    func blockRestarting(until deadline: UInt64?) {
        let now = monotonicNanoseconds()
        let index = state.currentThread
        state.threads[index].wait = .io
        state.threads[index].restartDeadline = deadline
        state.threads[index].deadline = min(deadline ?? .max, now &+ Self.recheckInterval)
        state.threads[index].result = 0
    }

    /// Undoes `blockRestarting` for the running thread: its call is to be made again from scratch.
    func cancelWait() {
        let index = state.currentThread
        state.threads[index].wait = .runnable
        state.threads[index].deadline = nil
        state.threads[index].restartDeadline = nil
    }

    /// Wakes every thread waiting for I/O: a pipe or eventfd changed; they re-run their calls.
    func wakeReaders() {
        for index in state.threads.indices where state.threads[index].wait == .io {
            state.threads[index].wait = .runnable
            state.threads[index].deadline = nil
            state.threads[index].restart = true
            state.threads[index].rewind = true
        }
    }

    /// EPOLLIN/POLLIN (1), EPOLLOUT/POLLOUT (4), ERR (8) and HUP (0x10) of descriptor `fd`,
    /// masked by `wanted`.
    func readiness(_ fd: Int64, wanted: UInt32) -> UInt32 {
        guard let file = state.files[fd] else { return 0 }
        var events: UInt32 = 0
        switch file.kind {
        case .pipe(let id, let writeEnd):
            let pipe = state.pipes[id]?.readiness() ?? (readable: false, writable: false, noReaders: true, noWriters: true)
            if writeEnd {
                if pipe.writable { events |= 4 }
                if pipe.noReaders { events |= 8 }
            } else {
                if pipe.readable { events |= 1 }
                if pipe.noWriters { events |= 0x10 }
            }
        case .eventCounter(let id):
            expireTimer(id)
            if (state.eventCounters[id]?.value ?? 0) > 0 { events |= 1 }
            if state.eventCounters[id]?.timer == nil { events |= 4 }  // a timerfd is never writable
        case .standardInput:
            switch input {
            case .empty, .bytes: events |= 1
            case .fileDescriptor(let host):
                var descriptor = pollfd(fd: host, events: Int16(POLLIN), revents: 0)
                if Glibc.poll(&descriptor, 1, 0) > 0 { events |= 1 }
            }
        case .output: events |= 4
        case .socket, .connection: events |= socketReadiness(file.kind)
        case .epoll: break
        default: events |= 5  // files are always ready
        }
        return events & wanted
    }

    /// read(2) of an eventfd: its 8-byte counter (or 1 for a semaphore), which it then lowers.
    func readEventCounter(_ id: Int, count: UInt64, nonblocking: Bool) -> Result<[UInt8], Errno> {
        guard count >= 8 else { return .failure(.invalidArgument) }
        expireTimer(id)
        guard var counter = state.eventCounters[id] else { return .failure(.badFileDescriptor) }
        guard counter.value > 0 else { return .failure(nonblocking ? .resourceTemporarilyUnavailable : Self.restart) }
        let value = counter.semaphore ? 1 : counter.value
        counter.value -= value
        state.eventCounters[id] = counter
        wakeReaders()
        return .success(value.littleEndianBytes)
    }

    /// write(2) to an eventfd: adds an 8-byte value (not all ones) to its counter.
    func writeEventCounter(_ id: Int, _ bytes: [UInt8]) -> Result<Int, Errno> {
        guard bytes.count >= 8 else { return .failure(.invalidArgument) }
        let value = UInt64(littleEndianBytes: bytes[0..<8])
        guard value != .max, var counter = state.eventCounters[id], counter.timer == nil else { return .failure(.invalidArgument) }
        let (sum, overflow) = counter.value.addingReportingOverflow(value)
        guard !overflow, sum != .max else { return .failure(.resourceTemporarilyUnavailable) }
        counter.value = sum
        state.eventCounters[id] = counter
        wakeReaders()
        return .success(8)
    }
}

// MARK: timerfd

extension LinuxPersonality {
    /// timerfd_create(CLOCK_REALTIME, MONOTONIC or BOOTTIME, TFD_NONBLOCK | TFD_CLOEXEC): an
    /// eventfd-like counter of expirations, read (and waited on, in the 10 ms slices every
    /// wait has) as Linux's. Every clock is measured on the host's monotonic one.
    func timerCreate(clock: UInt64, flags: UInt64) -> HostCallEffect {
        guard [0, 1, 7].contains(clock) else { return Self.fail(.invalidArgument) }
        guard flags & ~(UInt64(O_CLOEXEC) | UInt64(O_NONBLOCK)) == 0 else { return Self.fail(.invalidArgument) }
        let id = state.nextObject
        let status = flags & UInt64(O_NONBLOCK) != 0 ? O_NONBLOCK : 0
        guard let fd = state.files.install(OpenFile(kind: .eventCounter(id: id), statusFlags: O_RDWR | status, path: "anon_inode:[timerfd]"),
                                           closeOnExec: flags & UInt64(O_CLOEXEC) != 0) else { return Self.fail(.tooManyOpenFiles) }
        state.nextObject += 1
        state.eventCounters[id] = EventCounter(value: 0, semaphore: false, timer: TimerSetting(deadline: nil, interval: 0))
        return .value(Int64(fd))
    }

    /// The timerfd behind `fd`, or the errno Linux gives.
    private func timer(_ fd: Int64) -> Result<Int, Errno> {
        guard let file = state.files[fd] else { return .failure(.badFileDescriptor) }
        guard case .eventCounter(let id) = file.kind, state.eventCounters[id]?.timer != nil else { return .failure(.invalidArgument) }
        return .success(id)
    }

    /// timerfd_settime: arms (relative, or TFD_TIMER_ABSTIME on the realtime clock's value
    /// turned into a delay) or disarms, and clears expirations not yet read.
    func timerSet(fd: Int64, flags: UInt64, _ memory: GuestMemoryView, new: UInt64, old: UInt64) throws -> HostCallEffect {
        guard flags & ~UInt64(3) == 0 else { return Self.fail(.invalidArgument) }  // TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET
        let id: Int
        switch timer(fd) {
        case .failure(let error): return Self.fail(error)
        case .success(let found): id = found
        }
        let words = try memory.read(new, count: 32)
        func word(_ index: Int) -> UInt64 { UInt64(littleEndianBytes: words[index * 8..<index * 8 + 8]) }
        // Seconds below 2^33 (272 years) keep every nanosecond count below 2^63: no trap, whatever the guest asks.
        guard word(1) < 1_000_000_000, word(3) < 1_000_000_000, word(0) < 1 << 33, word(2) < 1 << 33 else { return Self.fail(.invalidArgument) }
        if old != 0 { try memory.write(timerValue(id), to: old) }
        let interval = word(0) * 1_000_000_000 + word(1), value = word(2) * 1_000_000_000 + word(3)
        let now = monotonicNanoseconds()
        var deadline: UInt64?
        if value != 0 {
            if flags & 1 != 0 {
                var real = timespec()
                clock_gettime(CLOCK_REALTIME, &real)
                let realNow = UInt64(real.tv_sec) &* 1_000_000_000 &+ UInt64(real.tv_nsec)
                deadline = now &+ (value > realNow ? value - realNow : 0)
            } else {
                deadline = now &+ value
            }
        }
        state.eventCounters[id]?.value = 0
        state.eventCounters[id]?.timer = TimerSetting(deadline: deadline, interval: interval)
        return .value(0)
    }

    /// timerfd_gettime: time left and the period.
    func timerGet(fd: Int64, _ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        switch timer(fd) {
        case .failure(let error): return Self.fail(error)
        case .success(let id):
            try memory.write(timerValue(id), to: address)
            return .value(0)
        }
    }

    /// A timer's `struct itimerspec`: interval, then time left.
    private func timerValue(_ id: Int) -> [UInt8] {
        expireTimer(id)
        let setting = state.eventCounters[id]?.timer
        let now = monotonicNanoseconds()
        let left = setting?.deadline.map { $0 > now ? $0 - now : 1 } ?? 0
        let interval = setting?.interval ?? 0
        return [UInt8](littleEndianWords: [interval / 1_000_000_000, interval % 1_000_000_000, left / 1_000_000_000, left % 1_000_000_000])
    }

    /// Counts a timerfd's expirations up to now (each missed period is one) and re-arms it.
    func expireTimer(_ id: Int) {
        guard let setting = state.eventCounters[id]?.timer, let deadline = setting.deadline else { return }
        let now = monotonicNanoseconds()
        guard deadline <= now else { return }
        var expirations: UInt64 = 1
        var next: UInt64?
        if setting.interval > 0 {
            let missed = (now - deadline) / setting.interval
            expirations &+= missed
            next = deadline &+ (missed &+ 1) &* setting.interval
        }
        state.eventCounters[id]?.value &+= expirations
        state.eventCounters[id]?.timer?.deadline = next
    }
}

/// What an epoll set watches on one descriptor.
struct EpollInterest: Equatable, Codable {
    var events: UInt32
    var data: UInt64
}

/// An eventfd's counter; a timerfd's expirations (with `timer` set).
struct EventCounter: Equatable, Codable {
    var value: UInt64
    var semaphore: Bool
    /// A timerfd: when it next expires (monotonic ns; nil: disarmed) and its period (0: once).
    var timer: TimerSetting?
}

/// A timerfd's setting.
struct TimerSetting: Equatable, Codable {
    var deadline: UInt64?
    var interval: UInt64
}
