import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `AT_FDCWD`, for the calls that take a path relative to the working directory.
private let atCWD = LinuxPersonality.currentDirectory
/// `-errno` as an effect.
private func fail(_ error: Errno) -> HostCallEffect { LinuxPersonality.fail(error) }
/// A call Linux has that the layer does not serve: ENOSYS, counted in `unimplemented`.
private func notServed(_ linux: LinuxPersonality, _ call: HostCall) -> HostCallEffect { linux.notServed(call) }

extension SystemCallTable {
    /// The guest's architecture's table: x86-64.
    static let guest = x86_64

    /// Linux x86-64 system calls (`arch/x86/entry/syscalls/syscall_64.tbl`), each with the
    /// order its arguments arrive in (rdi, rsi, rdx, r10, r8, r9) decoded for its handler.
    static let x86_64 = SystemCallTable(files + fileAttributes + polling + sockets + memory + threads + signals + process)

    // MARK: files

    private static let files: [LinuxSystemCall] = [
        .init(0, "read", 3, exitless: .whenTransferCannotWait, transfer: .reads) { l, c in
            try l.read(fd: c.descriptor(0), c.memory, into: c[1], count: c[2], at: nil) },
        .init(17, "pread64", 4, exitless: .whenTransferCannotWait, transfer: .reads) { l, c in
            try l.read(fd: c.descriptor(0), c.memory, into: c[1], count: c[2], at: c[3]) },
        .init(1, "write", 3, exitless: .whenTransferCannotWait, transfer: .writes) { l, c in
            try l.write(fd: c.descriptor(0), c.memory, from: c[1], count: c[2], at: nil) },
        .init(18, "pwrite64", 4, exitless: .whenTransferCannotWait, transfer: .writes) { l, c in
            try l.write(fd: c.descriptor(0), c.memory, from: c[1], count: c[2], at: c[3]) },
        .init(19, "readv", 3, exitless: .whenTransferCannotWait, transfer: .reads) { l, c in
            try l.vector(false, fd: c.descriptor(0), c.memory, c[1], count: c[2]) },
        .init(20, "writev", 3, exitless: .whenTransferCannotWait, transfer: .writes) { l, c in
            try l.vector(true, fd: c.descriptor(0), c.memory, c[1], count: c[2]) },
        .init(2, "open", 3, exitless: .always) { l, c in try l.open(atCWD, c.memory, path: c[0], flags: c[1], mode: c[2]) },
        .init(257, "openat", 4, exitless: .always) { l, c in try l.open(c.descriptor(0), c.memory, path: c[1], flags: c[2], mode: c[3]) },
        .init(3, "close", 1, exitless: .always) { l, c in l.closeDescriptor(c.descriptor(0)) },
        .init(22, "pipe", 1, hostCost: .hostObject) { l, c in try l.makePipe(c.memory, into: c[0], flags: 0) },
        .init(293, "pipe2", 2, hostCost: .hostObject) { l, c in try l.makePipe(c.memory, into: c[0], flags: c[1]) },
        .init(8, "lseek", 3, exitless: .always) { l, c in  // a 64-bit offset
            l.seek(fd: c.descriptor(0), offset: Int64(bitPattern: c[1]), whence: c[2]) },
        .init(5, "fstat", 2, exitless: .always) { l, c in try l.statDescriptor(c.descriptor(0), c.memory, into: c[1]) },
        .init(4, "stat", 2, exitless: .always) { l, c in
            try l.statPath(atCWD, c.memory, path: c[0], into: c[1], follow: true, emptyPath: false) },
        .init(6, "lstat", 2, exitless: .always) { l, c in
            try l.statPath(atCWD, c.memory, path: c[0], into: c[1], follow: false, emptyPath: false) },
        .init(262, "newfstatat", 4, exitless: .always) { l, c in  // AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH
            try l.statPath(c.descriptor(0), c.memory, path: c[1], into: c[2], follow: c[3] & 0x100 == 0, emptyPath: c[3] & 0x1000 != 0) },
        .init(332, "statx", 5, exitless: .always) { l, c in try l.statx(c) },
        // Extended attributes: none to read (ENODATA), none listed, none may be set (ENOTSUP).
        .init(191, "getxattr", 4) { _, _ in fail(Errno(rawValue: 61)) },
        .init(192, "lgetxattr", 4) { _, _ in fail(Errno(rawValue: 61)) },
        .init(193, "fgetxattr", 4) { _, _ in fail(Errno(rawValue: 61)) },
        .init(194, "listxattr", 3) { _, _ in .value(0) },
        .init(195, "llistxattr", 3) { _, _ in .value(0) },
        .init(196, "flistxattr", 3) { _, _ in .value(0) },
        .init(188, "setxattr", 5) { _, _ in fail(Errno(rawValue: 95)) },
        .init(189, "lsetxattr", 5) { _, _ in fail(Errno(rawValue: 95)) },
        .init(190, "fsetxattr", 5) { _, _ in fail(Errno(rawValue: 95)) },
        .init(197, "removexattr", 2) { _, _ in fail(Errno(rawValue: 95)) },
        .init(198, "lremovexattr", 2) { _, _ in fail(Errno(rawValue: 95)) },
        .init(199, "fremovexattr", 2) { _, _ in fail(Errno(rawValue: 95)) },
        .init(21, "access", 2, exitless: .always) { l, c in try l.access(atCWD, c.memory, path: c[0], mode: c[1]) },
        .init(269, "faccessat", 3, exitless: .always) { l, c in try l.access(c.descriptor(0), c.memory, path: c[1], mode: c[2]) },
        .init(439, "faccessat2", 4, exitless: .always) { l, c in try l.access(c.descriptor(0), c.memory, path: c[1], mode: c[2]) },
        .init(89, "readlink", 3, exitless: .always) { l, c in try l.readLink(atCWD, c.memory, path: c[0], into: c[1], size: c[2]) },
        .init(267, "readlinkat", 4, exitless: .always) { l, c in
            try l.readLink(c.descriptor(0), c.memory, path: c[1], into: c[2], size: c[3]) },
        .init(79, "getcwd", 2, exitless: .always) { l, c in try l.currentWorkingDirectory(c.memory, into: c[0], size: c[1]) },
        .init(80, "chdir", 1) { l, c in try l.changeDirectory(c.memory, path: c[0]) },
        .init(217, "getdents64", 3, exitless: .always) { l, c in try l.directoryEntries(fd: c.descriptor(0), c.memory, into: c[1], count: c[2]) },
        .init(72, "fcntl", 3, exitless: .always) { l, c in try l.control(fd: c.descriptor(0), command: c[1], argument: c[2], c.memory) },
        .init(73, "flock", 2) { l, c in l.fileLock(fd: c.descriptor(0), operation: c[1]) },
        .init(88, "symlink", 2) { l, c in try l.makeSymbolicLink(c.memory, target: c[0], atCWD, path: c[1]) },
        .init(266, "symlinkat", 3) { l, c in try l.makeSymbolicLink(c.memory, target: c[0], c.descriptor(1), path: c[2]) },
        .init(86, "link", 2) { l, c in try l.makeHardLink(atCWD, c.memory, c[0], atCWD, c[1], flags: 0) },
        .init(265, "linkat", 5) { l, c in try l.makeHardLink(c.descriptor(0), c.memory, c[1], c.descriptor(2), c[3], flags: c[4]) },
        .init(32, "dup", 1, exitless: .always) { l, c in l.duplicate(c.descriptor(0), lowest: 0, at: nil, closeOnExec: false) },
        .init(33, "dup2", 2, exitless: .always) { l, c in
            l.duplicate(c.descriptor(0), lowest: 0, at: c.descriptor(1), closeOnExec: false, dup2: true) },
        .init(292, "dup3", 3, exitless: .always) { l, c in l.duplicate3(c.descriptor(0), c.descriptor(1), flags: c[2]) },
        .init(16, "ioctl", 3, exitless: .always) { l, c in try l.ioctl(fd: c.descriptor(0), request: c[1], c.memory, argument: c[2]) },
        .init(221, "fadvise64", 4) { l, c in l.checkDescriptor(c.descriptor(0)) },
        .init(74, "fsync", 1) { l, c in l.checkDescriptor(c.descriptor(0)) },
        .init(75, "fdatasync", 1) { l, c in l.checkDescriptor(c.descriptor(0)) },
        .init(83, "mkdir", 2) { l, c in try l.makeDirectory(atCWD, c.memory, path: c[0], mode: c[1]) },
        .init(258, "mkdirat", 3) { l, c in try l.makeDirectory(c.descriptor(0), c.memory, path: c[1], mode: c[2]) },
        .init(87, "unlink", 1) { l, c in try l.remove(atCWD, c.memory, path: c[0], directory: false) },
        .init(84, "rmdir", 1) { l, c in try l.remove(atCWD, c.memory, path: c[0], directory: true) },
        .init(263, "unlinkat", 3) { l, c in try l.remove(c.descriptor(0), c.memory, path: c[1], directory: c[2] & 0x200 != 0) },  // AT_REMOVEDIR
        .init(82, "rename", 2) { l, c in try l.rename(atCWD, c.memory, c[0], atCWD, c[1]) },
        .init(264, "renameat", 4) { l, c in try l.rename(c.descriptor(0), c.memory, c[1], c.descriptor(2), c[3]) },
        .init(316, "renameat2", 5) { l, c in try l.rename(c.descriptor(0), c.memory, c[1], c.descriptor(2), c[3]) },
        .init(40, "sendfile", 4, notServed),
        .init(326, "copy_file_range", 6, notServed),
    ]

    private static let fileAttributes: [LinuxSystemCall] = [
        .init(90, "chmod", 2) { l, c in try l.changeMode(atCWD, c.memory, path: c[0], mode: c[1], flags: 0) },
        .init(91, "fchmod", 2) { l, c in l.changeMode(fd: c.descriptor(0), mode: c[1]) },
        .init(268, "fchmodat", 3) { l, c in try l.changeMode(c.descriptor(0), c.memory, path: c[1], mode: c[2], flags: 0) },
        .init(452, "fchmodat2", 4) { l, c in try l.changeMode(c.descriptor(0), c.memory, path: c[1], mode: c[2], flags: c[3]) },
        .init(92, "chown", 3) { l, c in try l.changeOwner(atCWD, c.memory, path: c[0], user: c[1], group: c[2], flags: 0) },
        .init(94, "lchown", 3) { l, c in  // AT_SYMLINK_NOFOLLOW
            try l.changeOwner(atCWD, c.memory, path: c[0], user: c[1], group: c[2], flags: 0x100) },
        .init(93, "fchown", 3) { l, c in  // AT_EMPTY_PATH
            try l.changeOwner(c.descriptor(0), c.memory, path: 0, user: c[1], group: c[2], flags: 0x1000) },
        .init(260, "fchownat", 5) { l, c in
            try l.changeOwner(c.descriptor(0), c.memory, path: c[1], user: c[2], group: c[3], flags: c[4]) },
        .init(280, "utimensat", 4) { l, c in
            try l.setTimes(c.descriptor(0), c.memory, path: c[1], times: c[2], flags: c[3], microseconds: false) },
        .init(235, "utimes", 2) { l, c in try l.setTimes(atCWD, c.memory, path: c[0], times: c[1], flags: 0, microseconds: true) },
        .init(261, "futimesat", 3) { l, c in
            try l.setTimes(c.descriptor(0), c.memory, path: c[1], times: c[2], flags: 0, microseconds: true) },
        .init(132, "utime", 2) { l, c in try l.setTimes(path: c[0], utimbuf: c[1], c.memory) },
        .init(76, "truncate", 2) { l, c in try l.truncatePath(c.memory, path: c[0], length: Int64(bitPattern: c[1])) },
        .init(77, "ftruncate", 2) { l, c in l.truncate(fd: c.descriptor(0), length: Int64(bitPattern: c[1])) },
        .init(285, "fallocate", 4) { l, c in
            l.allocate(fd: c.descriptor(0), mode: c[1], offset: Int64(bitPattern: c[2]), length: Int64(bitPattern: c[3])) },
        .init(81, "fchdir", 1) { l, c in l.changeDirectory(fd: c.descriptor(0)) },
        .init(85, "creat", 2) { l, c in
            try l.open(atCWD, c.memory, path: c[0], flags: UInt64(UInt32(bitPattern: O_CREAT | O_WRONLY | O_TRUNC)), mode: c[1]) },
        .init(137, "statfs", 2) { l, c in try l.fileSystemStatus(atCWD, c.memory, path: c[0], into: c[1]) },
        .init(138, "fstatfs", 2) { l, c in try l.fileSystemStatus(fd: c.descriptor(0), c.memory, into: c[1]) },
        // Guest memory is never swapped: locking it is a no-op.
        .init(149, "mlock", 2) { _, _ in .value(0) },
        .init(150, "munlock", 2) { _, _ in .value(0) },
        .init(151, "mlockall", 1) { _, _ in .value(0) },
        .init(152, "munlockall", 0) { _, _ in .value(0) },
        .init(325, "mlock2", 3) { _, _ in .value(0) },
    ]

    // MARK: readiness

    private static let polling: [LinuxSystemCall] = [
        .init(213, "epoll_create", 1, hostCost: .hostObject) { l, c in l.epollCreate(size: c[0], flags: 0) },
        .init(291, "epoll_create1", 1, hostCost: .hostObject) { l, c in l.epollCreate(size: nil, flags: c[0]) },
        .init(233, "epoll_ctl", 4, hostCost: .hostObjectWhenArgument1(1)) { l, c in  // EPOLL_CTL_ADD
            try l.epollControl(c.descriptor(0), operation: c[1], fd: c.descriptor(2), event: c[3], c.memory) },
        .init(232, "epoll_wait", 4, connectionWait: .epoll) { l, c in try l.epollWait(c, timespec: false) },
        .init(281, "epoll_pwait", 6, connectionWait: .epoll) { l, c in try l.epollWait(c, timespec: false) },
        .init(441, "epoll_pwait2", 6, connectionWait: .epoll) { l, c in try l.epollWait(c, timespec: true) },
        .init(7, "poll", 3, connectionWait: .poll) { l, c in try l.poll(c, timespec: false) },
        .init(271, "ppoll", 5, connectionWait: .poll) { l, c in try l.poll(c, timespec: true) },
        .init(23, "select", 5) { l, c in try l.select(c, timespec: false) },
        .init(270, "pselect6", 6) { l, c in try l.select(c, timespec: true) },
        .init(283, "timerfd_create", 2, hostCost: .hostObject) { l, c in l.timerCreate(clock: c[0], flags: c[1]) },
        .init(286, "timerfd_settime", 4) { l, c in try l.timerSet(fd: c.descriptor(0), flags: c[1], c.memory, new: c[2], old: c[3]) },
        .init(287, "timerfd_gettime", 2) { l, c in try l.timerGet(fd: c.descriptor(0), c.memory, into: c[1]) },
        .init(284, "eventfd", 1, hostCost: .hostObject) { l, c in l.eventCounterCreate(initial: c[0], flags: 0) },
        .init(290, "eventfd2", 2, hostCost: .hostObject) { l, c in l.eventCounterCreate(initial: c[0], flags: c[1]) },
    ]

    // MARK: sockets

    private static let sockets: [LinuxSystemCall] = [
        .init(41, "socket", 3, hostCost: .hostObject) { l, c in l.createSocket(domain: c[0], type: c[1], protocol: c[2]) },
        .init(53, "socketpair", 4, hostCost: .hostObject) { l, c in
            try l.socketPair(domain: c[0], type: c[1], protocol: c[2], c.memory, into: c[3]) },
        .init(49, "bind", 3) { l, c in try l.bind(c.descriptor(0), c.memory, address: c[1], length: c[2]) },
        .init(50, "listen", 2) { l, c in l.listen(c.descriptor(0)) },
        .init(43, "accept", 3, exitless: .whenConnectionPending, connectionWait: .accept) { l, c in
            try l.accept(c.descriptor(0), c.memory, address: c[1], length: c[2], flags: 0) },
        .init(288, "accept4", 4, exitless: .whenConnectionPending, connectionWait: .accept) { l, c in
            try l.accept(c.descriptor(0), c.memory, address: c[1], length: c[2], flags: c[3]) },
        .init(42, "connect", 3) { l, c in try l.connect(c.descriptor(0), c.memory, address: c[1], length: c[2]) },
        .init(44, "sendto", 6, exitless: .whenTransferCannotWait, transfer: .sends) { l, c in try l.sendTo(c) },
        .init(45, "recvfrom", 6, exitless: .whenTransferCannotWait, transfer: .receives) { l, c in
            try l.receive(c.descriptor(0), c.memory, vectors: [(c[1], c[2])], flags: c[3], address: c[4], length: c[5]) },
        .init(46, "sendmsg", 3, exitless: .whenTransferCannotWait, transfer: .sends) { l, c in try l.message(c, sending: true) },
        .init(47, "recvmsg", 3, exitless: .whenTransferCannotWait, transfer: .receives) { l, c in try l.message(c, sending: false) },
        .init(48, "shutdown", 2, exitless: .always) { l, c in l.shutdown(c.descriptor(0), how: c[1]) },
        .init(51, "getsockname", 3, exitless: .always) { l, c in
            try l.socketName(c.descriptor(0), peer: false, c.memory, address: c[1], length: c[2]) },
        .init(52, "getpeername", 3, exitless: .always) { l, c in
            try l.socketName(c.descriptor(0), peer: true, c.memory, address: c[1], length: c[2]) },
        .init(54, "setsockopt", 5, exitless: .always) { l, c in
            try l.setSocketOption(c.descriptor(0), level: c[1], name: c[2], c.memory, value: c[3], length: c[4]) },
        .init(55, "getsockopt", 5, exitless: .always) { l, c in
            try l.socketOption(c.descriptor(0), level: c[1], name: c[2], c.memory, value: c[3], length: c[4]) },
    ]

    // MARK: memory

    private static let memory: [LinuxSystemCall] = [
        .init(9, "mmap", 6, exitless: .whenSmallAnonymousMapping, hostCost: .hostObject) { l, c in try l.mapMemory(c) },
        .init(11, "munmap", 2, exitless: .always) { l, c in try l.unmapMemory(c) },
        .init(10, "mprotect", 3) { l, c in l.protect(c[0], length: c[1], protection: c[2]) },
        .init(25, "mremap", 5) { l, c in try l.remap(c[0], oldLength: c[1], newLength: c[2], flags: c[3]) },
        .init(28, "madvise", 3, exitless: .whenSmallRange) { l, c in l.adviseMemory(c[0], length: c[1], advice: c[2]) },
        .init(12, "brk", 1, exitless: .whenSmallHeapGrowth) { l, c in try l.builtins.handle(c) },
    ]

    // MARK: threads

    private static let threads: [LinuxSystemCall] = [
        .init(56, "clone", 5, hostCost: .thread) { l, c in  // clone(flags, stack, parent_tid, child_tid, tls)
            try l.clone(flags: c[0], stack: c[1], parentTID: c[2], childTID: c[3], tls: c[4], c.memory) },
        .init(435, "clone3", 2, hostCost: .thread) { l, c in try l.clone3(c) },
        .init(57, "fork", 0, notServed),
        .init(59, "execve", 3, notServed),
        .init(61, "wait4", 4, notServed),
        .init(186, "gettid", 0, exitless: .always) { l, _ in .value(Int64(l.currentThread.tid)) },
        .init(218, "set_tid_address", 1) { l, c in l.setTIDAddress(c[0]) },
        .init(24, "sched_yield", 0) { l, _ in l.hasOtherThreads ? .thread(.yield) : .value(0) },
        .init(60, "exit", 1) { l, c in  // this thread only, or the process when it is the last
            l.hasOtherThreads ? try l.exitThread(status: Int32(truncatingIfNeeded: c[0] & 0xff), c.memory) : try l.builtins.handle(c) },
        .init(231, "exit_group", 1) { l, c in try l.builtins.handle(c) },
        .init(202, "futex", 6, exitless: .whenFutexWakes) { l, c in try l.futex(c, c.memory) },
        .init(158, "arch_prctl", 2) { l, c in try l.builtins.handle(c) },
        .init(273, "set_robust_list", 2) { _, _ in .value(0) },
        .init(334, "rseq", 4) { _, _ in fail(.noFunction) },  // as a kernel without it
        // Sleeps: with other threads the vCPU runs them meanwhile.
        .init(35, "nanosleep", 2) { l, c in
            l.hasOtherThreads ? try l.sleepBlocking(c.memory, request: c[0], absolute: false, clock: 1)
                : try l.sleep(c.memory, request: c[0], remaining: c[1], absolute: false, clock: 1) },
        .init(230, "clock_nanosleep", 4) { l, c in  // TIMER_ABSTIME
            l.hasOtherThreads ? try l.sleepBlocking(c.memory, request: c[2], absolute: c[1] & 1 != 0, clock: c[0])
                : try l.sleep(c.memory, request: c[2], remaining: c[3], absolute: c[1] & 1 != 0, clock: c[0]) },
    ]

    // MARK: signals

    private static let signals: [LinuxSystemCall] = [
        .init(13, "rt_sigaction", 4, exitless: .always) { l, c in
            try l.signalAction(c.signed(0), c.memory, new: c[1], old: c[2], size: c[3]) },
        .init(14, "rt_sigprocmask", 4) { l, c in try l.signalMask(how: c[0], c.memory, new: c[1], old: c[2], size: c[3]) },
        .init(131, "sigaltstack", 2) { l, c in try l.alternateStack(c.memory, new: c[0], old: c[1]) },
        .init(15, "rt_sigreturn", 0) { _, _ in .thread(.signalReturn) },
        .init(62, "kill", 2) { l, c in l.kill(pid: c[0], signal: c[1]) },
        .init(200, "tkill", 2) { l, c in l.threadKill(process: nil, thread: c[0], signal: c[1]) },
        .init(234, "tgkill", 3) { l, c in l.threadKill(process: c[0], thread: c[1], signal: c[2]) },
        .init(37, "alarm", 1) { l, c in l.alarm(seconds: c[0]) },
        .init(38, "setitimer", 3) { l, c in try l.setTimer(which: c[0], c.memory, new: c[1], old: c[2]) },
    ]

    // MARK: the process: identity, limits, time

    private static let process: [LinuxSystemCall] = [
        .init(39, "getpid", 0, exitless: .always) { _, _ in .value(1) },
        .init(110, "getppid", 0, exitless: .always) { _, _ in .value(0) },  // no parent inside
        .init(111, "getpgrp", 0) { _, _ in .value(1) },
        .init(109, "setpgid", 2) { _, _ in .value(1) },
        .init(112, "setsid", 0) { _, _ in .value(1) },
        .init(121, "getpgid", 1) { _, _ in .value(1) },
        .init(102, "getuid", 0, exitless: .always) { _, _ in .value(0) },
        .init(104, "getgid", 0, exitless: .always) { _, _ in .value(0) },
        .init(107, "geteuid", 0, exitless: .always) { _, _ in .value(0) },
        .init(108, "getegid", 0, exitless: .always) { _, _ in .value(0) },
        .init(115, "getgroups", 2) { _, _ in .value(0) },
        .init(125, "capget", 2) { _, _ in fail(.notPermitted) },
        .init(95, "umask", 1) { l, c in l.setUmask(c[0]) },
        .init(63, "uname", 1, exitless: .always) { l, c in try l.uname(c.memory, into: c[0]) },
        .init(99, "sysinfo", 1, exitless: .always) { l, c in try l.systemInformation(c.memory, into: c[0]) },
        .init(97, "getrlimit", 2, exitless: .always) { l, c in try l.limit(resource: c[0], c.memory, old: c[1], new: 0) },
        .init(302, "prlimit64", 4, exitless: .always) { l, c in
            try l.processLimit(pid: c[0], resource: c[1], c.memory, new: c[2], old: c[3]) },
        .init(204, "sched_getaffinity", 3, exitless: .always) { l, c in try l.affinity(size: c[1], c.memory, into: c[2]) },
        .init(203, "sched_setaffinity", 3) { _, _ in .value(0) },
        .init(157, "prctl", 5) { l, c in try l.processControl(c, c.memory) },
        .init(330, "pkey_alloc", 2) { _, _ in fail(.noFunction) },
        .init(98, "getrusage", 2) { l, c in try l.resourceUsage(who: Int32(truncatingIfNeeded: c[0]), c.memory, into: c[1]) },
        .init(100, "times", 1) { l, c in try l.times(c.memory, into: c[0]) },
        .init(228, "clock_gettime", 2, exitless: .always) { l, c in try l.clockTime(c) },
        .init(229, "clock_getres", 2, exitless: .always) { l, c in try l.clockResolution(c.memory, into: c[1]) },
        .init(96, "gettimeofday", 2, exitless: .always) { l, c in try l.timeOfDay(c.memory, into: c[0]) },
        .init(201, "time", 1, exitless: .always) { l, c in try l.time(c.memory, into: c[0]) },
        .init(318, "getrandom", 3, exitless: .always) { l, c in try l.builtins.handle(c) },
    ]
}
