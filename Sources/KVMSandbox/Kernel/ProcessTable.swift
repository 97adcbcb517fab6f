import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The processes of one sandbox, each a micro-VM of its own on a host thread of its own: their
/// ids, parents, process groups and sessions, exit statuses until reaped (zombies), and how to
/// signal each. Made when the first process forks; everything here is what Linux keeps in its
/// task list, within the sandbox only (pid 1 is the sandbox's first process, its init).
///
/// (@unchecked: every field is read and written with `lock` held.)
final class ProcessTable: @unchecked Sendable {
    /// One process.
    struct Process {
        let pid: Int32
        var parent: Int32
        var group: Int32
        var session: Int32
        /// The `wait` status once it ended: a zombie until its parent reaps it.
        var status: Int32?
        /// How to interrupt it with a signal (its current image's; nil once it ended).
        var signals: HostSignals?
        /// Whether it has exec'd or ended (what a `vfork` parent waits for).
        var released = false
        /// A child of it changed state since it last looked (`SIGCHLD`).
        var childSignal = false
        /// Its command line, for reports and `/proc`.
        var arguments: [String]
        /// `prctl(PR_SET_PDEATHSIG)`: the signal it gets when its parent ends (0: none).
        var deathSignal: Int32 = 0
    }

    private let lock = ConditionLock()
    private var processes: [Int32: Process] = [:]
    private var nextID: Int32 = 2
    /// Host threads running processes (all but the first), not yet finished.
    private var running = 0
    /// What the run's processes did, for `Sandbox.processStatistics`: processes started, and
    /// the images `execve` loaded and the VM exits of every process that has ended.
    private var started = 1, images = 0, finishedExits = 0
    private var terminating = false
    /// The most processes alive at once (zombies count, as `RLIMIT_NPROC` counts tasks).
    let limit: Int
    /// When the whole tree's `--timeout` ends (monotonic ns), if it has one.
    let deadline: UInt64?

    /// A table whose pid 1 is the sandbox that forks first.
    init(first signals: HostSignals, arguments: [String], limit: Int, deadline: UInt64?) {
        self.limit = max(1, limit)
        self.deadline = deadline
        processes[1] = Process(pid: 1, parent: 0, group: 1, session: 1, signals: signals, arguments: arguments)
    }

    /// A new id for a thread (threads and processes share one id space, as in Linux).
    func allocateID() -> Int32 {
        lock.withLock {
            let id = nextID
            nextID = nextID < Int32.max - 1 ? nextID + 1 : 2
            return id
        }
    }

    /// Enters a child of `parent` in the table; nil past `limit` or while the sandbox ends (EAGAIN).
    func add(childOf parent: Int32, arguments: [String]) -> Int32? {
        lock.withLock {
            guard !terminating, processes.count < limit, let parentRecord = processes[parent] else { return nil }
            var pid = nextID
            while processes[pid] != nil { pid = pid < Int32.max - 1 ? pid + 1 : 2 }
            nextID = pid < Int32.max - 1 ? pid + 1 : 2
            processes[pid] = Process(pid: pid, parent: parent, group: parentRecord.group, session: parentRecord.session,
                                     signals: nil, arguments: arguments)
            started += 1
            return pid
        }
    }

    /// Forgets a child that could not be started after `add`.
    func remove(_ pid: Int32) { lock.withLock { processes[pid] = nil; lock.broadcast() } }

    /// Runs `body` (a process's whole life) on a host thread of its own. False if the host
    /// refused a thread (the caller then removes the process: EAGAIN).
    func start(_ body: @escaping @Sendable () -> Void) -> Bool {
        lock.withLock { running += 1 }
        guard HostThread.start(body) == nil else {
            lock.withLock { running -= 1; lock.broadcast() }
            return false
        }
        return true
    }

    /// `prctl(PR_SET_PDEATHSIG, signal)` for `pid`.
    func setDeathSignal(_ pid: Int32, _ signal: Int32) { lock.withLock { processes[pid]?.deathSignal = signal } }

    /// `prctl(PR_GET_PDEATHSIG)` for `pid`.
    func deathSignal(of pid: Int32) -> Int32 { lock.withLock { processes[pid]?.deathSignal ?? 0 } }

    /// A process ended after its images (`images` of them loaded by `execve`) made `exits` VM exits.
    func account(images: Int, exits: Int) {
        lock.withLock {
            self.images += images
            finishedExits += exits
        }
    }

    /// Processes started (the first included); images `execve` loaded and VM exits, of the
    /// processes that ended.
    var totals: (processes: Int, images: Int, exits: Int) { lock.withLock { (started, images, finishedExits) } }

    /// A process's host thread is done with it (after `ended`).
    func threadFinished() { lock.withLock { running -= 1; lock.broadcast() } }

    /// Process `pid` now runs this image (after a fork or an exec): how to signal it.
    func running(_ pid: Int32, signals: HostSignals, arguments: [String]? = nil, exec: Bool = false) {
        lock.withLock {
            processes[pid]?.signals = signals
            if let arguments { processes[pid]?.arguments = arguments }
            if exec { processes[pid]?.released = true }
            lock.broadcast()
        }
    }

    /// Process `pid` ended with wait status `status`: a zombie for its parent to reap (its own
    /// children go to pid 1), and the parent is told (`SIGCHLD`).
    func ended(_ pid: Int32, status: Int32) {
        lock.withLock {
            guard var record = processes[pid] else { return }
            record.status = status
            record.signals = nil
            record.released = true
            processes[pid] = record
            for (child, var process) in processes where process.parent == pid {
                process.parent = 1
                processes[child] = process
                if process.deathSignal != 0, process.status == nil { process.signals?.send(process.deathSignal) }
            }
            if let parent = processes[record.parent], parent.status == nil {
                processes[record.parent]?.childSignal = true
                // The parent learns at its next stop; a parent blocked in the host is kicked.
                parent.signals?.post(17)
            } else {
                processes[pid] = nil  // no parent to reap it (pid 1 itself, or an orphan's parent gone)
            }
            lock.broadcast()
        }
    }

    /// Whether `pid` has exec'd or ended (a vfork parent resumes then); waits up to `milliseconds`.
    func waitReleased(_ pid: Int32, milliseconds: Int) -> Bool {
        lock.withLock {
            if processes[pid]?.released ?? true { return true }
            lock.wait(milliseconds: milliseconds)
            return processes[pid]?.released ?? true
        }
    }

    /// What `wait4`/`waitid` found.
    enum WaitResult: Equatable {
        /// This child ended with this status (reaped unless `keep`).
        case ended(pid: Int32, status: Int32)
        /// Children match, none has ended yet.
        case running
        /// No child matches (ECHILD).
        case noChild
    }

    /// Whether `process` is one a pid selector other than -1 names (`kill`, `wait`): `pid` > 0
    /// that process, 0 the caller's group, < -1 group -pid. The guest chooses the selector, so
    /// INT_MIN (whose negation does not exist) names nothing.
    private static func selects(_ process: Process, _ selector: Int32, callerGroup: Int32) -> Bool {
        switch selector {
        case 0: return process.group == callerGroup
        case Int32.min: return false
        case ..<0: return process.group == -selector
        default: return process.pid == selector
        }
    }

    /// Which children a wait is for: `pid` > 0 that child, -1 any, 0 the caller's group, < -1 group -pid.
    func reap(parent: Int32, selector: Int32, keep: Bool = false) -> WaitResult {
        lock.withLock {
            let group = processes[parent]?.group ?? 0
            let children = processes.values.filter { process in
                process.parent == parent && (selector == -1 || Self.selects(process, selector, callerGroup: group))
            }
            guard !children.isEmpty else { return .noChild }
            guard let done = children.filter({ $0.status != nil }).min(by: { $0.pid < $1.pid }), let status = done.status else {
                return .running
            }
            if !keep { processes[done.pid] = nil }
            return .ended(pid: done.pid, status: status)
        }
    }

    /// Waits until something in the table changes or `milliseconds` pass.
    func waitForChange(milliseconds: Int) { lock.withLock { lock.wait(milliseconds: milliseconds) } }

    /// Takes the note that a child of `pid` changed state.
    func takeChildSignal(_ pid: Int32) -> Bool {
        lock.withLock {
            guard processes[pid]?.childSignal == true else { return false }
            processes[pid]?.childSignal = false
            return true
        }
    }

    /// `getppid`.
    func parent(of pid: Int32) -> Int32 { lock.withLock { processes[pid]?.parent ?? 0 } }

    /// `getpgid(pid)` (0: the caller), or nil: no such process.
    func group(of pid: Int32) -> Int32? { lock.withLock { processes[pid]?.group } }

    /// `getsid(pid)`, or nil.
    func session(of pid: Int32) -> Int32? { lock.withLock { processes[pid]?.session } }

    /// `setpgid(pid, group)` by `caller`: itself or a child, into an existing group of its session or a new one.
    func setGroup(caller: Int32, pid: Int32, group: Int32) -> Errno? {
        lock.withLock {
            let target = pid == 0 ? caller : pid
            guard let record = processes[target], record.status == nil || target == caller else { return .noSuchProcess }
            guard target == caller || record.parent == caller else { return .noSuchProcess }
            let newGroup = group == 0 ? target : group
            guard newGroup > 0 else { return .invalidArgument }
            if record.pid == record.session { return .notPermitted }  // a session leader
            if newGroup != target, !processes.values.contains(where: { $0.group == newGroup && $0.session == record.session }) {
                return .notPermitted
            }
            processes[target]?.group = newGroup
            return nil
        }
    }

    /// `setsid()` by `caller`: a new session and group led by it; EPERM for a group leader.
    func newSession(_ caller: Int32) -> Int32? {
        lock.withLock {
            guard processes[caller] != nil, !processes.values.contains(where: { $0.group == caller && $0.pid != caller }),
                  processes[caller]?.group != caller else { return nil }
            processes[caller]?.group = caller
            processes[caller]?.session = caller
            return caller
        }
    }

    /// The running processes a `kill(pid, ...)` from `caller` reaches: `pid` > 0 that one,
    /// 0 the caller's group, -1 every process but pid 1 and the caller, < -1 group -pid.
    /// Nil: none exists (ESRCH); a zombie is reached (nothing happens to it).
    func targets(of selector: Int32, from caller: Int32) -> [(pid: Int32, signals: HostSignals?)]? {
        lock.withLock {
            let group = processes[caller]?.group ?? 0
            let chosen = processes.values.filter { process in
                // -1: as Linux, every process but init and the caller.
                selector == -1 ? process.pid != 1 && process.pid != caller : Self.selects(process, selector, callerGroup: group)
            }
            return chosen.isEmpty ? nil : chosen.map { ($0.pid, $0.signals) }
        }
    }

    /// The command line of `pid`, if it is in the table.
    func arguments(of pid: Int32) -> [String]? { lock.withLock { processes[pid]?.arguments } }

    /// Pids of every process in the table, zombies included.
    var pids: [Int32] { lock.withLock { processes.keys.sorted() } }

    /// The first process ended: every other one is killed (as a PID namespace's init dying),
    /// and this returns once their host threads are done (at most `seconds`).
    func terminateAll(waitingAtMost seconds: Double = 10) {
        let end = monotonicNanoseconds() &+ UInt64(seconds * 1e9)
        lock.withLock { terminating = true }
        while true {
            let (victims, busy) = lock.withLock { () -> ([HostSignals], Int) in
                (processes.values.filter { $0.pid != 1 }.compactMap(\.signals), running)
            }
            if busy == 0 { return }
            for victim in victims { victim.send(9) }
            if monotonicNanoseconds() >= end { return }
            lock.withLock { if running > 0 { lock.wait(milliseconds: 20) } }
        }
    }

    /// Seconds left of the tree's timeout (nil: none); at least a nanosecond.
    var remainingTimeout: Double? {
        deadline.map { max(Double(Int64(bitPattern: $0 &- monotonicNanoseconds())) / 1e9, 1e-9) }
    }
}
