import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Identity, limits, time and signal state: fixed answers consistent with the sandbox's limits.
/// Signal actions, masks and the alternate stack are stored and read back (delivery belongs to
/// the threads-and-signals work).
extension LinuxPersonality {
    /// `umask(mask)`: the old mask.
    func setUmask(_ mask: UInt64) -> HostCallEffect {
        let old = state.umask
        state.umask = mask & 0o777
        return .value(Int64(old))
    }

    /// `prlimit64(pid, resource, new, old)`: of the guest itself only.
    func processLimit(pid: UInt64, resource: UInt64, _ memory: GuestMemoryView, new: UInt64, old: UInt64) throws -> HostCallEffect {
        guard pid == 0 || pid == 1 else { return Self.fail(.noSuchProcess) }
        return try limit(resource: resource, memory, old: old, new: new)
    }

    /// `sched_getaffinity(pid, size, mask)`: CPUs 0 to `processors` - 1.
    func affinity(size: UInt64, _ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        guard size >= 8 else { return Self.fail(.invalidArgument) }
        try memory.store(processors >= 64 ? UInt64.max : (UInt64(1) << UInt64(processors)) - 1, at: address)
        return .value(8)
    }

    /// `clock_gettime(clock, timespec *)`: the guest's CPU clocks here, the others the built-in's.
    func clockTime(_ call: HostCall) throws -> HostCallEffect {
        guard Self.isCPUClock(call[0]) else { return try builtins.handle(call) }
        let cpu = guestCPUNanoseconds
        try call.memory.write([UInt8](littleEndianWords: [cpu / 1_000_000_000, cpu % 1_000_000_000]), to: call[1])
        return .value(0)
    }

    /// `times(struct tms *)`: the guest's CPU time in clock ticks; ticks since boot.
    func times(_ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        let ticks = guestCPUNanoseconds / 10_000_000  // USER_HZ = 100
        if address != 0 { try memory.write([UInt8](littleEndianWords: [ticks, 0, 0, 0]), to: address) }
        return .value(Int64(monotonicNanoseconds() / 10_000_000 & 0x7fff_ffff_ffff))
    }

    /// `clock_getres(clock, timespec *)`: 1 ns.
    func clockResolution(_ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        if address != 0 { try memory.write([UInt8](UInt64(0).littleEndianBytes + UInt64(1).littleEndianBytes), to: address) }
        return .value(0)
    }

    /// `gettimeofday(struct timeval *, timezone *)`.
    func timeOfDay(_ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if address != 0 {
            try memory.write(UInt64(now.tv_sec).littleEndianBytes + UInt64(now.tv_nsec / 1000).littleEndianBytes, to: address)
        }
        return .value(0)
    }

    /// `getcpu(unsigned *cpu, unsigned *node, cache)`: CPU 0 of node 0 (one vCPU), as the vDSO says.
    func processor(_ memory: GuestMemoryView, cpu: UInt64, node: UInt64) throws -> HostCallEffect {
        if cpu != 0 { try memory.store(UInt32(0), at: cpu) }
        if node != 0 { try memory.store(UInt32(0), at: node) }
        return .value(0)
    }

    /// `time(time_t *)`.
    func time(_ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        let now = UInt64(Glibc.time(nil))
        if address != 0 { try memory.store(now, at: address) }
        return .value(Int64(now))
    }

    /// CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID, or a `clock_getcpuclockid` /
    /// `pthread_getcpuclockid` id (negative). Every guest thread's clock reads the process's.
    static func isCPUClock(_ clock: UInt64) -> Bool {
        clock == 2 || clock == 3 || Int32(truncatingIfNeeded: clock) < 0 && clock & 0xffff_ffff_0000_0000 == 0xffff_ffff_0000_0000
    }

    /// The CPU time the guest has had: the time its vCPU thread spent in guest mode (the
    /// kernel's `guest_time` of that thread, in 10 ms ticks; KVM and PVM account it) over all
    /// of this VM's runs. The host's own work serving the guest's calls is not the guest's, as
    /// a Linux process's user time excludes the kernel's.
    var guestCPUNanoseconds: UInt64 {
        guard let thread = cpuThread, let ticks = Self.guestTicks(thread) else { return state.cpuNanoseconds }
        return state.cpuNanoseconds &+ (ticks >= cpuTicksStart ? ticks - cpuTicksStart : 0) &* 10_000_000
    }

    /// A run starts on the calling thread: its guest time counts for the guest from now.
    func beginCPUAccounting() {
        let thread = pid_t(chost_gettid())
        guard let ticks = Self.guestTicks(thread) else { return }
        cpuThread = thread
        cpuTicksStart = ticks
    }

    /// A run ended: what it used is added to the guest's CPU time.
    func endCPUAccounting() {
        state.cpuNanoseconds = guestCPUNanoseconds
        cpuThread = nil
    }

    /// Field 43 (`guest_time`, clock ticks) of `/proc/self/task/TID/stat`, or nil.
    static func guestTicks(_ thread: pid_t) -> UInt64? {
        let fd = Glibc.open("/proc/self/task/\(thread)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0, let end = buffer[0..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        // Fields after the command's closing parenthesis start at field 3.
        let fields = buffer[(end + 1)..<n].split(separator: UInt8(ascii: " "))
        guard fields.count > 40 else { return nil }
        return UInt64(String(decoding: fields[40], as: UTF8.self))
    }

    /// getrusage(RUSAGE_SELF/THREAD/CHILDREN): user time is the guest's CPU time, system time
    /// zero, the resident size the guest memory in use; children: none.
    func resourceUsage(who: Int32, _ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        guard [0, 1, -1].contains(who) else { return Self.fail(.invalidArgument) }  // SELF, THREAD, CHILDREN
        var words = [UInt64](repeating: 0, count: 18)  // struct rusage: two timevals, then 14 longs
        if who != -1 {
            let cpu = guestCPUNanoseconds
            words[0] = cpu / 1_000_000_000
            words[1] = cpu % 1_000_000_000 / 1000
            words[4] = (space.memory.size - space.availableBytes) >> 10  // ru_maxrss, KiB
        }
        try memory.write([UInt8](littleEndianWords: words), to: address)
        return .value(0)
    }

    func uname(_ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        var bytes: [UInt8] = []
        for field in ["Linux", "kvmsandbox", "6.1.0", "#1 SMP kvmsandbox", "x86_64", "(none)"] {
            bytes += Array(field.utf8.prefix(64)) + [UInt8](repeating: 0, count: 65 - min(64, field.utf8.count))
        }
        try memory.write(bytes, to: address)
        return .value(0)
    }

    func systemInformation(_ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        var uptime = timespec()
        clock_gettime(CLOCK_MONOTONIC, &uptime)
        var words: [UInt64] = [UInt64(uptime.tv_sec), 0, 0, 0]      // uptime, loads[3]
        words += [space.memory.size, space.availableBytes, 0, 0, 0, 0]  // ram, free, shared, buffer, swap, free swap
        words += [1]                                                   // procs (u16) + padding
        words += [0, 0]                                                // high memory
        var bytes = [UInt8](littleEndianWords: words)
        bytes += UInt32(1).littleEndianBytes + [UInt8](repeating: 0, count: 4)  // mem_unit, padding
        try memory.write(bytes, to: address)
        return .value(0)
    }

    /// Resource limits, consistent with the sandbox: the stack, the memory size, the fd table.
    func limit(resource: UInt64, _ memory: GuestMemoryView, old: UInt64, new: UInt64) throws -> HostCallEffect {
        let infinity = UInt64.max
        let value: (UInt64, UInt64)
        switch resource {
        case 3: value = (stackSize, stackSize)                            // RLIMIT_STACK
        case 2, 9, 5: value = (space.memory.size, space.memory.size)      // RLIMIT_DATA, RLIMIT_AS, RLIMIT_RSS
        case 7: value = (UInt64(FileTable.limit), UInt64(FileTable.limit)) // RLIMIT_NOFILE
        case 4: value = (0, 0)                                            // RLIMIT_CORE
        case 6: value = (1, 1)                                            // RLIMIT_NPROC
        case 0...15: value = (infinity, infinity)
        default: return Self.fail(.invalidArgument)
        }
        if old != 0 { try memory.write(value.0.littleEndianBytes + value.1.littleEndianBytes, to: old) }
        if new != 0 {
            // Lowering is accepted (and has no effect yet); raising above the sandbox's is refused.
            let requested = try memory.read(new, count: 16)
            let maximum = UInt64(littleEndianBytes: requested[8..<16])
            if maximum > value.1 { return Self.fail(.notPermitted) }
        }
        return .value(0)
    }

    func processControl(_ call: HostCall, _ memory: GuestMemoryView) throws -> HostCallEffect {
        switch call[0] {
        case 15:  // PR_SET_NAME
            let name = try memory.readCString(call[1], maxLength: 4096)
            state.threadName = Array(name.utf8.prefix(15)) + [UInt8](repeating: 0, count: 16 - min(15, name.utf8.count))
            return .value(0)
        case 16:  // PR_GET_NAME
            try memory.write(state.threadName, to: call[1])
            return .value(0)
        case 3: return .value(1)  // PR_GET_DUMPABLE
        case 4: return call[1] <= 1 ? .value(0) : Self.fail(.invalidArgument)  // PR_SET_DUMPABLE: nothing dumps here anyway
        case 1:  // PR_SET_PDEATHSIG (the first process has no parent in the sandbox: never sent)
            guard call[1] <= 64 else { return Self.fail(.invalidArgument) }
            processes?.setDeathSignal(pid, Int32(call[1]))
            return .value(0)
        case 2:  // PR_GET_PDEATHSIG
            try memory.write(UInt32(bitPattern: processes?.deathSignal(of: pid) ?? 0).littleEndianBytes, to: call[1])
            return .value(0)
        default: return Self.fail(.invalidArgument)
        }
    }

    /// nanosleep/clock_nanosleep: sleeps in slices, never past the run's deadline (then `EINTR`
    /// with the time left, as a signal would).
    func sleep(_ memory: GuestMemoryView, request: UInt64, remaining: UInt64, absolute: Bool, clock: UInt64) throws -> HostCallEffect {
        let words = try memory.read(request, count: 16)
        let seconds = Int64(bitPattern: UInt64(littleEndianBytes: words[0..<8]))
        let nanoseconds = Int64(bitPattern: UInt64(littleEndianBytes: words[8..<16]))
        guard seconds >= 0, (0..<1_000_000_000).contains(nanoseconds) else { return Self.fail(.invalidArgument) }
        let clockID: clockid_t = clock == 0 ? CLOCK_REALTIME : CLOCK_MONOTONIC
        var now = timespec()
        clock_gettime(clockID, &now)
        let nowNS = Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
        let requestNS = seconds > Int64.max / 2_000_000_000 ? Int64.max / 2 : seconds * 1_000_000_000 + nanoseconds
        let endNS = absolute ? requestNS : nowNS &+ requestNS
        while true {
            clock_gettime(clockID, &now)
            let current = Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
            if current >= endNS { return .value(0) }
            if interrupter?.isInterrupted ?? false {
                if !absolute && remaining != 0 {
                    let left = UInt64(endNS - current)
                    try memory.write((left / 1_000_000_000).littleEndianBytes + (left % 1_000_000_000).littleEndianBytes, to: remaining)
                }
                return Self.fail(.interrupted)
            }
            let slice = min(endNS - current, 50_000_000)
            var pause = timespec(tv_sec: 0, tv_nsec: Int(slice))
            nanosleep(&pause, nil)
        }
    }
}

extension LinuxPersonality {
    /// `getresuid`/`getresgid`: 0 (the guest's only identity) into each of the three words.
    func storeIdentity(_ memory: GuestMemoryView, at addresses: [UInt64]) throws -> HostCallEffect {
        for address in addresses { try memory.write(UInt32(0).littleEndianBytes, to: address) }
        return .value(0)
    }

    /// The `set*id` calls: each id must be 0 (the guest's own) or -1 (unchanged); the guest
    /// cannot take another identity (`EPERM`).
    func keepIdentity(_ ids: [UInt64]) -> HostCallEffect {
        ids.allSatisfy { UInt32(truncatingIfNeeded: $0) == 0 || UInt32(truncatingIfNeeded: $0) == UInt32.max }
            ? .value(0) : Self.fail(.notPermitted)
    }
}
