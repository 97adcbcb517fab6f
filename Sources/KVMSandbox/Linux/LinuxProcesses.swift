import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What a process call asks of the sandbox (the VM itself changes: a copy, a new image).
enum ProcessRequest: Equatable {
    /// `fork`, `vfork`, `clone`/`clone3` of a process: a copy of this VM as a child.
    case fork(ForkRequest)
    /// `execve`/`execveat`: this process runs a new program.
    case exec(ExecRequest)
}

/// A `fork`-like call's arguments (`clone`'s).
struct ForkRequest: Equatable {
    /// `CLONE_*` flags (the exit signal in the low byte).
    var flags: UInt64
    /// The child's stack pointer (0: the caller's).
    var stack: UInt64 = 0
    var parentTID: UInt64 = 0, childTID: UInt64 = 0
    /// The child's TLS base (`CLONE_SETTLS`).
    var tls: UInt64?

    /// The parent waits until the child execs or ends (`vfork`, `posix_spawn`).
    var waitsForChild: Bool { flags & LinuxPersonality.cloneVfork != 0 }
}

/// An `execve`: the guest path (absolute), argv and the environment.
struct ExecRequest: Equatable {
    var path: String
    var arguments: [String]
    var environment: [String]
}

/// Processes: ids, `fork`/`clone` of a process and `execve` (carried out by the sandbox, which
/// owns the VM), `wait4`/`waitid`, process groups and sessions, `kill` of other processes. The
/// table of processes (`ProcessTable`) is made at the first fork; until then this process is
/// pid 1 alone.
extension LinuxPersonality {
    static let cloneVM: UInt64 = 0x100, cloneVfork: UInt64 = 0x4000, cloneThread: UInt64 = 0x10000
    static let cloneParentSetTID: UInt64 = 0x100000, cloneChildClearTID: UInt64 = 0x200000
    static let cloneChildSetTID: UInt64 = 0x1000000, cloneSetTLS: UInt64 = 0x80000
    /// Flags a process clone may carry (CLONE_FILES and CLONE_SIGHAND are taken as copies;
    /// CLONE_CLEAR_SIGHAND is what exec does anyway).
    static let processCloneFlags: UInt64 = 0xff | cloneVM | 0x400 | 0x800 | 0x1000 | cloneVfork | cloneSetTLS
        | cloneParentSetTID | cloneChildClearTID | cloneChildSetTID | 0x1_0000_0000

    /// `fork`, `vfork` and a `clone` without `CLONE_THREAD`: a child process.
    func forkProcess(_ request: ForkRequest) -> HostCallEffect {
        guard request.flags & ~Self.processCloneFlags == 0 else { return Self.fail(.invalidArgument) }
        // Sharing memory without vfork's wait (a process sharing its parent's memory while both run): not offered.
        if request.flags & Self.cloneVM != 0, !request.waitsForChild { return Self.fail(.invalidArgument) }
        guard request.tls.map({ $0 < X86PageTables.userAddressLimit }) ?? true else { return Self.fail(.notPermitted) }
        return .process(.fork(request))
    }

    /// The thread id the guest sees: the main thread's is the pid, as in Linux.
    func publicThreadID(_ tid: Int32) -> Int32 { tid == 1 ? pid : tid }

    /// The thread a guest's thread id names (the pid names the main thread).
    func internalThreadID(_ tid: Int32) -> Int32 { tid == pid ? 1 : tid }

    /// `getppid`.
    var parentProcessID: Int64 { Int64(processes?.parent(of: pid) ?? 0) }

    /// `execve(path, argv, envp)` and `execveat(dirfd, path, argv, envp, flags)`.
    func execute(_ dirfd: Int64, _ memory: GuestMemoryView, path address: UInt64, arguments: UInt64, environment: UInt64,
                 flags: UInt64 = 0) throws -> HostCallEffect {
        guard flags & ~UInt64(0x1100) == 0 else { return Self.fail(.invalidArgument) }  // AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH
        let path: String
        switch try guestPath(dirfd, memory, address, allowEmpty: flags & 0x1000 != 0) {
        case .failure(let error): return Self.fail(error)
        case .success(let found): path = found
        }
        var total = 0
        func strings(_ list: UInt64) throws -> [String]? {
            var result: [String] = []
            guard list != 0 else { return result }
            for index in 0..<UInt64(Self.maximumExecStrings) {
                let pointer = try memory.load(UInt64.self, at: list &+ index &* 8)
                if pointer == 0 { return result }
                let string = try memory.readCString(pointer, maxLength: Self.maximumExecBytes)
                total += string.utf8.count + 1
                guard total <= Self.maximumExecBytes else { return nil }
                result.append(string)
            }
            return nil
        }
        guard let argv = try strings(arguments), let envp = try strings(environment) else { return Self.fail(.argListTooLong) }
        return .process(.exec(ExecRequest(path: path, arguments: argv, environment: envp)))
    }

    /// The most strings and bytes an `execve`'s argv and environment may hold (E2BIG past them;
    /// Linux's limit is a quarter of the stack, 2 MiB by default).
    static let maximumExecStrings = 1 << 17, maximumExecBytes = 2 << 20

    /// `wait4(pid, status, options, rusage)`.
    func wait(selector: UInt64, _ memory: GuestMemoryView, status: UInt64, options: UInt64, usage: UInt64) throws -> HostCallEffect {
        // WNOHANG, WUNTRACED, WCONTINUED, __WNOTHREAD, __WALL, __WCLONE
        guard options & ~UInt64(0xe000_000b) == 0 else { return Self.fail(.invalidArgument) }
        let chosen = Int32(truncatingIfNeeded: selector)
        guard chosen != Int32.min else { return Self.fail(.noSuchProcess) }  // as Linux
        switch waitForChild(selector: chosen, noHang: options & 1 != 0, keep: false) {
        case .failure(let error): return Self.fail(error)
        case .success(nil): return .value(0)
        case .success(let (child, code)?):
            if status != 0 { try memory.store(UInt32(bitPattern: code), at: status) }
            if usage != 0 { try memory.write([UInt8](repeating: 0, count: 144), to: usage) }
            return .value(Int64(child))
        }
    }

    /// `waitid(idtype, id, infop, options, rusage)`.
    func waitID(type: UInt64, id: UInt64, _ memory: GuestMemoryView, info: UInt64, options: UInt64) throws -> HostCallEffect {
        // WNOHANG, WSTOPPED, WEXITED, WCONTINUED, WNOWAIT, __WNOTHREAD, __WALL, __WCLONE
        guard options & ~UInt64(0xe100_000f) == 0, options & 0xe != 0 else { return Self.fail(.invalidArgument) }
        let selector: Int32
        switch type {
        case 0: selector = -1                                          // P_ALL
        case 1: selector = Int32(truncatingIfNeeded: id)               // P_PID
            guard selector > 0 else { return Self.fail(.invalidArgument) }
        case 2:                                                        // P_PGID
            let group = Int32(truncatingIfNeeded: id)
            guard group >= 0 else { return Self.fail(.invalidArgument) }  // as Linux (and -INT_MIN does not exist)
            selector = group == 0 ? 0 : -group
        default: return Self.fail(.invalidArgument)
        }
        guard options & 4 != 0 else { return Self.fail(.noChildProcess) }  // only exits are reported
        switch waitForChild(selector: selector, noHang: options & 1 != 0, keep: options & 0x100_0000 != 0) {
        case .failure(let error): return Self.fail(error)
        case .success(let found):
            var bytes = [UInt8](repeating: 0, count: 128)  // siginfo_t
            if let (child, code) = found {
                let killed = code & 0x7f != 0
                bytes.replaceSubrange(0..<4, with: UInt32(17).littleEndianBytes)                    // si_signo: SIGCHLD
                bytes.replaceSubrange(8..<12, with: UInt32(killed ? 2 : 1).littleEndianBytes)       // CLD_KILLED, CLD_EXITED
                bytes.replaceSubrange(16..<20, with: UInt32(bitPattern: child).littleEndianBytes)   // si_pid
                bytes.replaceSubrange(24..<28, with: UInt32(bitPattern: killed ? code & 0x7f : code >> 8 & 0xff).littleEndianBytes)
            }
            if info != 0 { try memory.write(bytes, to: info) }
            return .value(0)
        }
    }

    /// The child a wait reaps (nil: none has ended and `noHang`), waiting on the table until one
    /// ends, the run's deadline passes or a host signal comes (EINTR). With other threads the
    /// caller blocks and they run (the call is made again after a recheck interval).
    private func waitForChild(selector: Int32, noHang: Bool, keep: Bool) -> Result<(Int32, Int32)?, Errno> {
        guard let processes else { return .failure(.noChildProcess) }
        while true {
            switch processes.reap(parent: pid, selector: selector, keep: keep) {
            case .noChild: return .failure(.noChildProcess)
            case .ended(let child, let status): return .success((child, status))
            case .running: break
            }
            if noHang { return .success(nil) }
            if mustNotWait { return .failure(Self.restart) }
            if interrupter?.isInterrupted ?? false { return .failure(.interrupted) }
            processes.waitForChange(milliseconds: Int(OutputWriter.pollSlice))
        }
    }

    /// `kill(pid, signal)`: this process, another of the sandbox's, a process group, or every
    /// process (-1); nothing outside the sandbox exists.
    func kill(pid selector: UInt64, signal: UInt64) -> HostCallEffect {
        let target = Int32(truncatingIfNeeded: selector)
        guard signal <= 64 else { return Self.fail(.invalidArgument) }
        guard let processes else {
            guard target == pid || target == 0 || target == -1 else { return Self.fail(.noSuchProcess) }
            return send(signal, to: state.currentThread)
        }
        if target == pid { return send(signal, to: state.currentThread) }
        guard let reached = processes.targets(of: target, from: pid) else { return Self.fail(.noSuchProcess) }
        var own = HostCallEffect.value(0)
        for process in reached {
            if process.pid == pid { own = send(signal, to: state.currentThread) }
            else if signal != 0 { process.signals?.send(Int32(signal)) }
        }
        return own
    }

    /// `getpgid(pid)` / `getsid(pid)` (0: the caller).
    func processGroup(of selector: UInt64, session: Bool) -> HostCallEffect {
        let target = selector == 0 ? pid : Int32(truncatingIfNeeded: selector)
        guard let processes else { return target == pid ? .value(Int64(pid)) : Self.fail(.noSuchProcess) }
        guard let value = session ? processes.session(of: target) : processes.group(of: target) else { return Self.fail(.noSuchProcess) }
        return .value(Int64(value))
    }

    /// `setpgid(pid, pgid)`.
    func setProcessGroup(_ selector: UInt64, _ group: UInt64) -> HostCallEffect {
        let target = Int32(truncatingIfNeeded: selector), newGroup = Int32(truncatingIfNeeded: group)
        guard target >= 0, newGroup >= 0 else { return Self.fail(.invalidArgument) }
        guard let processes else {
            guard target == 0 || target == pid else { return Self.fail(.noSuchProcess) }
            return newGroup == 0 || newGroup == pid ? .value(0) : Self.fail(.notPermitted)
        }
        return processes.setGroup(caller: pid, pid: target, group: newGroup).map(Self.fail) ?? .value(0)
    }

    /// `setsid()`: pid 1 alone already leads its session (EPERM, as for any group leader).
    func newSession() -> HostCallEffect {
        guard let processes, let session = processes.newSession(pid) else { return Self.fail(.notPermitted) }
        return .value(Int64(session))
    }

    /// The process ended (or its image was replaced by `execve` and nothing moved over): every
    /// descriptor is closed, so pipe readers elsewhere see end of file.
    func closeEverything() {
        state.files.closeAll()
        state.epolls = [:]
        syncPipeEnds()
        releasePipes()
        cancelSharedWaits()
    }

    /// A reset of a fork (`Sandbox.reset`): processes the request started are killed.
    func endProcesses() {
        guard let processes, pid == 1 else { return }
        processes.terminateAll()
        self.processes = nil
    }
}
