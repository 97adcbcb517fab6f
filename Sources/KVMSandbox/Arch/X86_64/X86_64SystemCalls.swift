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
        .init(0, "read", "fxu", exitless: .whenTransferCannotWait, transfer: .reads) { l, c in
            try l.read(fd: c.descriptor(0), c.memory, into: c[1], count: c[2], at: nil) },
        .init(17, "pread64", "fxuu", exitless: .whenTransferCannotWait, transfer: .reads) { l, c in
            try l.read(fd: c.descriptor(0), c.memory, into: c[1], count: c[2], at: c[3]) },
        .init(1, "write", "fxu", exitless: .whenTransferCannotWait, transfer: .writes) { l, c in
            try l.write(fd: c.descriptor(0), c.memory, from: c[1], count: c[2], at: nil) },
        .init(18, "pwrite64", "fxuu", exitless: .whenTransferCannotWait, transfer: .writes) { l, c in
            try l.write(fd: c.descriptor(0), c.memory, from: c[1], count: c[2], at: c[3]) },
        .init(19, "readv", "fxu", exitless: .whenTransferCannotWait, transfer: .reads) { l, c in
            try l.vector(false, fd: c.descriptor(0), c.memory, c[1], count: c[2]) },
        .init(20, "writev", "fxu", exitless: .whenTransferCannotWait, transfer: .writes) { l, c in
            try l.vector(true, fd: c.descriptor(0), c.memory, c[1], count: c[2]) },
        .init(2, "open", "pxo", exitless: .always) { l, c in try l.open(atCWD, c.memory, path: c[0], flags: c[1], mode: c[2]) },
        .init(257, "openat", "fpxo", exitless: .always) { l, c in try l.open(c.descriptor(0), c.memory, path: c[1], flags: c[2], mode: c[3]) },
        .init(3, "close", "f", exitless: .always) { l, c in l.closeDescriptor(c.descriptor(0)) },
        .init(22, "pipe", "x", hostCost: .hostObject) { l, c in try l.makePipe(c.memory, into: c[0], flags: 0) },
        .init(293, "pipe2", "xx", hostCost: .hostObject) { l, c in try l.makePipe(c.memory, into: c[0], flags: c[1]) },
        .init(8, "lseek", "fdu", exitless: .always) { l, c in  // a 64-bit offset
            l.seek(fd: c.descriptor(0), offset: Int64(bitPattern: c[1]), whence: c[2]) },
        .init(5, "fstat", "fx", exitless: .always) { l, c in try l.statDescriptor(c.descriptor(0), c.memory, into: c[1]) },
        .init(4, "stat", "px", exitless: .always) { l, c in
            try l.statPath(atCWD, c.memory, path: c[0], into: c[1], follow: true, emptyPath: false) },
        .init(6, "lstat", "px", exitless: .always) { l, c in
            try l.statPath(atCWD, c.memory, path: c[0], into: c[1], follow: false, emptyPath: false) },
        .init(262, "newfstatat", "fpxx", exitless: .always) { l, c in  // AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH
            try l.statPath(c.descriptor(0), c.memory, path: c[1], into: c[2], follow: c[3] & 0x100 == 0, emptyPath: c[3] & 0x1000 != 0) },
        .init(332, "statx", "fpxxx", exitless: .always) { l, c in try l.statx(c) },
        // Extended attributes: none to read (ENODATA), none listed, none may be set (ENOTSUP).
        .init(191, "getxattr", "xxxx") { _, _ in fail(Errno(rawValue: 61)) },
        .init(192, "lgetxattr", "xxxx") { _, _ in fail(Errno(rawValue: 61)) },
        .init(193, "fgetxattr", "xxxx") { _, _ in fail(Errno(rawValue: 61)) },
        .init(194, "listxattr", "xxx") { _, _ in .value(0) },
        .init(195, "llistxattr", "xxx") { _, _ in .value(0) },
        .init(196, "flistxattr", "xxx") { _, _ in .value(0) },
        .init(188, "setxattr", "xxxxx") { _, _ in fail(Errno(rawValue: 95)) },
        .init(189, "lsetxattr", "xxxxx") { _, _ in fail(Errno(rawValue: 95)) },
        .init(190, "fsetxattr", "xxxxx") { _, _ in fail(Errno(rawValue: 95)) },
        .init(197, "removexattr", "xx") { _, _ in fail(Errno(rawValue: 95)) },
        .init(198, "lremovexattr", "xx") { _, _ in fail(Errno(rawValue: 95)) },
        .init(199, "fremovexattr", "xx") { _, _ in fail(Errno(rawValue: 95)) },
        .init(21, "access", "po", exitless: .always) { l, c in try l.access(atCWD, c.memory, path: c[0], mode: c[1]) },
        .init(269, "faccessat", "fpo", exitless: .always) { l, c in try l.access(c.descriptor(0), c.memory, path: c[1], mode: c[2]) },
        .init(439, "faccessat2", "fpox", exitless: .always) { l, c in try l.access(c.descriptor(0), c.memory, path: c[1], mode: c[2]) },
        .init(89, "readlink", "pxu", exitless: .always) { l, c in try l.readLink(atCWD, c.memory, path: c[0], into: c[1], size: c[2]) },
        .init(267, "readlinkat", "fpxu", exitless: .always) { l, c in
            try l.readLink(c.descriptor(0), c.memory, path: c[1], into: c[2], size: c[3]) },
        .init(79, "getcwd", "xu", exitless: .always) { l, c in try l.currentWorkingDirectory(c.memory, into: c[0], size: c[1]) },
        .init(80, "chdir", "p") { l, c in try l.changeDirectory(c.memory, path: c[0]) },
        .init(217, "getdents64", "fxu", exitless: .always) { l, c in try l.directoryEntries(fd: c.descriptor(0), c.memory, into: c[1], count: c[2]) },
        .init(72, "fcntl", "fdx", exitless: .always) { l, c in try l.control(fd: c.descriptor(0), command: c[1], argument: c[2], c.memory) },
        .init(73, "flock", "fx") { l, c in l.fileLock(fd: c.descriptor(0), operation: c[1]) },
        .init(88, "symlink", "pp") { l, c in try l.makeSymbolicLink(c.memory, target: c[0], atCWD, path: c[1]) },
        .init(266, "symlinkat", "pfp") { l, c in try l.makeSymbolicLink(c.memory, target: c[0], c.descriptor(1), path: c[2]) },
        .init(86, "link", "pp") { l, c in try l.makeHardLink(atCWD, c.memory, c[0], atCWD, c[1], flags: 0) },
        .init(265, "linkat", "fpfpx") { l, c in try l.makeHardLink(c.descriptor(0), c.memory, c[1], c.descriptor(2), c[3], flags: c[4]) },
        .init(32, "dup", "f", exitless: .always) { l, c in l.duplicate(c.descriptor(0), lowest: 0, at: nil, closeOnExec: false) },
        .init(33, "dup2", "ff", exitless: .always) { l, c in
            l.duplicate(c.descriptor(0), lowest: 0, at: c.descriptor(1), closeOnExec: false, dup2: true) },
        .init(292, "dup3", "ffx", exitless: .always) { l, c in l.duplicate3(c.descriptor(0), c.descriptor(1), flags: c[2]) },
        .init(16, "ioctl", "fxx", exitless: .always) { l, c in try l.ioctl(fd: c.descriptor(0), request: c[1], c.memory, argument: c[2]) },
        .init(221, "fadvise64", "fuud") { l, c in l.checkDescriptor(c.descriptor(0)) },
        .init(74, "fsync", "f") { l, c in l.checkDescriptor(c.descriptor(0)) },
        .init(75, "fdatasync", "f") { l, c in l.checkDescriptor(c.descriptor(0)) },
        .init(83, "mkdir", "po") { l, c in try l.makeDirectory(atCWD, c.memory, path: c[0], mode: c[1]) },
        .init(258, "mkdirat", "fpo") { l, c in try l.makeDirectory(c.descriptor(0), c.memory, path: c[1], mode: c[2]) },
        .init(87, "unlink", "p") { l, c in try l.remove(atCWD, c.memory, path: c[0], directory: false) },
        .init(84, "rmdir", "p") { l, c in try l.remove(atCWD, c.memory, path: c[0], directory: true) },
        .init(263, "unlinkat", "fpx") { l, c in try l.remove(c.descriptor(0), c.memory, path: c[1], directory: c[2] & 0x200 != 0) },  // AT_REMOVEDIR
        .init(82, "rename", "pp") { l, c in try l.rename(atCWD, c.memory, c[0], atCWD, c[1]) },
        .init(264, "renameat", "fpfp") { l, c in try l.rename(c.descriptor(0), c.memory, c[1], c.descriptor(2), c[3]) },
        .init(316, "renameat2", "fpfpx") { l, c in try l.rename(c.descriptor(0), c.memory, c[1], c.descriptor(2), c[3]) },
        .init(40, "sendfile", "ffxu") { l, c in try l.sendFile(output: c.descriptor(0), input: c.descriptor(1), c.memory, offset: c[2], count: c[3]) },
        .init(326, "copy_file_range", "fxfxux") { l, c in
            try l.copyFileRange(input: c.descriptor(0), c.memory, inputOffset: c[1], output: c.descriptor(2), outputOffset: c[3], count: c[4], flags: c[5]) },
    ]

    private static let fileAttributes: [LinuxSystemCall] = [
        .init(90, "chmod", "po") { l, c in try l.changeMode(atCWD, c.memory, path: c[0], mode: c[1], flags: 0) },
        .init(91, "fchmod", "fo") { l, c in l.changeMode(fd: c.descriptor(0), mode: c[1]) },
        .init(268, "fchmodat", "fpo") { l, c in try l.changeMode(c.descriptor(0), c.memory, path: c[1], mode: c[2], flags: 0) },
        .init(452, "fchmodat2", "fpox") { l, c in try l.changeMode(c.descriptor(0), c.memory, path: c[1], mode: c[2], flags: c[3]) },
        .init(92, "chown", "pdd") { l, c in try l.changeOwner(atCWD, c.memory, path: c[0], user: c[1], group: c[2], flags: 0) },
        .init(94, "lchown", "pdd") { l, c in  // AT_SYMLINK_NOFOLLOW
            try l.changeOwner(atCWD, c.memory, path: c[0], user: c[1], group: c[2], flags: 0x100) },
        .init(93, "fchown", "fdd") { l, c in  // AT_EMPTY_PATH
            try l.changeOwner(c.descriptor(0), c.memory, path: 0, user: c[1], group: c[2], flags: 0x1000) },
        .init(260, "fchownat", "fpddx") { l, c in
            try l.changeOwner(c.descriptor(0), c.memory, path: c[1], user: c[2], group: c[3], flags: c[4]) },
        .init(280, "utimensat", "fpxx") { l, c in
            try l.setTimes(c.descriptor(0), c.memory, path: c[1], times: c[2], flags: c[3], microseconds: false) },
        .init(235, "utimes", "px") { l, c in try l.setTimes(atCWD, c.memory, path: c[0], times: c[1], flags: 0, microseconds: true) },
        .init(261, "futimesat", "fpx") { l, c in
            try l.setTimes(c.descriptor(0), c.memory, path: c[1], times: c[2], flags: 0, microseconds: true) },
        .init(132, "utime", "px") { l, c in try l.setTimes(path: c[0], utimbuf: c[1], c.memory) },
        .init(76, "truncate", "pu") { l, c in try l.truncatePath(c.memory, path: c[0], length: Int64(bitPattern: c[1])) },
        .init(77, "ftruncate", "fu") { l, c in l.truncate(fd: c.descriptor(0), length: Int64(bitPattern: c[1])) },
        .init(285, "fallocate", "fxuu") { l, c in
            l.allocate(fd: c.descriptor(0), mode: c[1], offset: Int64(bitPattern: c[2]), length: Int64(bitPattern: c[3])) },
        .init(81, "fchdir", "f") { l, c in l.changeDirectory(fd: c.descriptor(0)) },
        .init(85, "creat", "po") { l, c in
            try l.open(atCWD, c.memory, path: c[0], flags: UInt64(UInt32(bitPattern: O_CREAT | O_WRONLY | O_TRUNC)), mode: c[1]) },
        .init(137, "statfs", "px") { l, c in try l.fileSystemStatus(atCWD, c.memory, path: c[0], into: c[1]) },
        .init(138, "fstatfs", "fx") { l, c in try l.fileSystemStatus(fd: c.descriptor(0), c.memory, into: c[1]) },
        // Guest memory is never swapped: locking it is a no-op.
        .init(149, "mlock", "xx") { _, _ in .value(0) },
        .init(150, "munlock", "xx") { _, _ in .value(0) },
        .init(151, "mlockall", "x") { _, _ in .value(0) },
        .init(152, "munlockall", "") { _, _ in .value(0) },
        .init(325, "mlock2", "xxx") { _, _ in .value(0) },
    ]

    // MARK: readiness

    private static let polling: [LinuxSystemCall] = [
        .init(213, "epoll_create", "d", hostCost: .hostObject) { l, c in l.epollCreate(size: c[0], flags: 0) },
        .init(291, "epoll_create1", "x", hostCost: .hostObject) { l, c in l.epollCreate(size: nil, flags: c[0]) },
        .init(233, "epoll_ctl", "fdfx", hostCost: .hostObjectWhenArgument1(1)) { l, c in  // EPOLL_CTL_ADD
            try l.epollControl(c.descriptor(0), operation: c[1], fd: c.descriptor(2), event: c[3], c.memory) },
        .init(232, "epoll_wait", "fxdd", connectionWait: .epoll) { l, c in try l.epollWait(c, timespec: false) },
        .init(281, "epoll_pwait", "fxddxu", connectionWait: .epoll) { l, c in try l.epollWait(c, timespec: false) },
        .init(441, "epoll_pwait2", "fxdxxu", connectionWait: .epoll) { l, c in try l.epollWait(c, timespec: true) },
        .init(7, "poll", "xud", connectionWait: .poll) { l, c in try l.poll(c, timespec: false) },
        .init(271, "ppoll", "xuxxu", connectionWait: .poll) { l, c in try l.poll(c, timespec: true) },
        .init(23, "select", "dxxxx") { l, c in try l.select(c, timespec: false) },
        .init(270, "pselect6", "dxxxxx") { l, c in try l.select(c, timespec: true) },
        .init(283, "timerfd_create", "dx", hostCost: .hostObject) { l, c in l.timerCreate(clock: c[0], flags: c[1]) },
        .init(286, "timerfd_settime", "xxxx") { l, c in try l.timerSet(fd: c.descriptor(0), flags: c[1], c.memory, new: c[2], old: c[3]) },
        .init(287, "timerfd_gettime", "xx") { l, c in try l.timerGet(fd: c.descriptor(0), c.memory, into: c[1]) },
        .init(284, "eventfd", "u", hostCost: .hostObject) { l, c in l.eventCounterCreate(initial: c[0], flags: 0) },
        .init(290, "eventfd2", "ux", hostCost: .hostObject) { l, c in l.eventCounterCreate(initial: c[0], flags: c[1]) },
    ]

    // MARK: sockets

    private static let sockets: [LinuxSystemCall] = [
        .init(41, "socket", "dxd", hostCost: .hostObject) { l, c in l.createSocket(domain: c[0], type: c[1], protocol: c[2]) },
        .init(53, "socketpair", "dxdx", hostCost: .hostObject) { l, c in
            try l.socketPair(domain: c[0], type: c[1], protocol: c[2], c.memory, into: c[3]) },
        .init(49, "bind", "fxu") { l, c in try l.bind(c.descriptor(0), c.memory, address: c[1], length: c[2]) },
        .init(50, "listen", "fd") { l, c in l.listen(c.descriptor(0), backlog: c[1]) },
        .init(43, "accept", "fxx", exitless: .whenConnectionPending, connectionWait: .accept) { l, c in
            try l.accept(c.descriptor(0), c.memory, address: c[1], length: c[2], flags: 0) },
        .init(288, "accept4", "fxxx", exitless: .whenConnectionPending, connectionWait: .accept) { l, c in
            try l.accept(c.descriptor(0), c.memory, address: c[1], length: c[2], flags: c[3]) },
        .init(42, "connect", "fxu") { l, c in try l.connect(c.descriptor(0), c.memory, address: c[1], length: c[2]) },
        .init(44, "sendto", "fxuxxu", exitless: .whenTransferCannotWait, transfer: .sends) { l, c in try l.sendTo(c) },
        .init(45, "recvfrom", "fxuxxx", exitless: .whenTransferCannotWait, transfer: .receives) { l, c in
            try l.receive(c.descriptor(0), c.memory, vectors: [(c[1], c[2])], flags: c[3], address: c[4], length: c[5]) },
        .init(46, "sendmsg", "fxx", exitless: .whenTransferCannotWait, transfer: .sends) { l, c in try l.message(c, sending: true) },
        .init(47, "recvmsg", "fxx", exitless: .whenTransferCannotWait, transfer: .receives) { l, c in try l.message(c, sending: false) },
        .init(48, "shutdown", "fd", exitless: .always) { l, c in l.shutdown(c.descriptor(0), how: c[1]) },
        .init(51, "getsockname", "fxx", exitless: .always) { l, c in
            try l.socketName(c.descriptor(0), peer: false, c.memory, address: c[1], length: c[2]) },
        .init(52, "getpeername", "fxx", exitless: .always) { l, c in
            try l.socketName(c.descriptor(0), peer: true, c.memory, address: c[1], length: c[2]) },
        .init(54, "setsockopt", "fddxu", exitless: .always) { l, c in
            try l.setSocketOption(c.descriptor(0), level: c[1], name: c[2], c.memory, value: c[3], length: c[4]) },
        .init(55, "getsockopt", "fddxx", exitless: .always) { l, c in
            try l.socketOption(c.descriptor(0), level: c[1], name: c[2], c.memory, value: c[3], length: c[4]) },
    ]

    // MARK: memory

    private static let memory: [LinuxSystemCall] = [
        .init(9, "mmap", "xuxxfx", exitless: .whenSmallAnonymousMapping, hostCost: .hostObject) { l, c in try l.mapMemory(c) },
        .init(11, "munmap", "xu", exitless: .always) { l, c in try l.unmapMemory(c) },
        .init(10, "mprotect", "xux") { l, c in l.protect(c[0], length: c[1], protection: c[2]) },
        .init(25, "mremap", "xuuxx") { l, c in try l.remap(c[0], oldLength: c[1], newLength: c[2], flags: c[3]) },
        .init(28, "madvise", "xud", exitless: .whenSmallRange) { l, c in l.adviseMemory(c[0], length: c[1], advice: c[2]) },
        .init(12, "brk", "x", exitless: .whenSmallHeapGrowth) { l, c in try l.builtins.handle(c) },
    ]

    // MARK: threads

    private static let threads: [LinuxSystemCall] = [
        .init(56, "clone", "xxxxx", hostCost: .thread) { l, c in  // clone(flags, stack, parent_tid, child_tid, tls)
            try l.clone(flags: c[0], stack: c[1], parentTID: c[2], childTID: c[3], tls: c[4], c.memory) },
        .init(435, "clone3", "xu", hostCost: .thread) { l, c in try l.clone3(c) },
        .init(57, "fork", "") { l, _ in l.forkProcess(ForkRequest(flags: 17)) },  // SIGCHLD
        .init(58, "vfork", "") { l, _ in l.forkProcess(ForkRequest(flags: 17 | LinuxPersonality.cloneVM | LinuxPersonality.cloneVfork)) },
        .init(59, "execve", "pxx") { l, c in try l.execute(atCWD, c.memory, path: c[0], arguments: c[1], environment: c[2]) },
        .init(322, "execveat", "fpxxx") { l, c in
            try l.execute(c.descriptor(0), c.memory, path: c[1], arguments: c[2], environment: c[3], flags: c[4]) },
        .init(61, "wait4", "dxxx") { l, c in try l.wait(selector: c[0], c.memory, status: c[1], options: c[2], usage: c[3]) },
        .init(247, "waitid", "ddxxx") { l, c in try l.waitID(type: c[0], id: c[1], c.memory, info: c[2], options: c[3]) },
        .init(186, "gettid", "", exitless: .always) { l, _ in .value(Int64(l.publicThreadID(l.currentThread.tid))) },
        .init(218, "set_tid_address", "x") { l, c in l.setTIDAddress(c[0]) },
        .init(24, "sched_yield", "") { l, _ in l.hasOtherThreads ? .thread(.yield) : .value(0) },
        .init(60, "exit", "d") { l, c in  // this thread only, or the process when it is the last
            l.hasOtherThreads ? try l.exitThread(status: Int32(truncatingIfNeeded: c[0] & 0xff), c.memory) : try l.builtins.handle(c) },
        .init(231, "exit_group", "d") { l, c in try l.builtins.handle(c) },
        .init(202, "futex", "xdxxxx", exitless: .whenFutexWakes) { l, c in try l.futex(c, c.memory) },
        .init(158, "arch_prctl", "xx") { l, c in try l.builtins.handle(c) },
        .init(273, "set_robust_list", "xx") { _, _ in .value(0) },
        .init(334, "rseq", "xxxx") { _, _ in fail(.noFunction) },  // as a kernel without it
        // Sleeps: with other threads the vCPU runs them meanwhile.
        .init(35, "nanosleep", "xx") { l, c in
            l.hasOtherThreads ? try l.sleepBlocking(c.memory, request: c[0], absolute: false, clock: 1)
                : try l.sleep(c.memory, request: c[0], remaining: c[1], absolute: false, clock: 1) },
        .init(230, "clock_nanosleep", "dxxx") { l, c in  // TIMER_ABSTIME
            l.hasOtherThreads ? try l.sleepBlocking(c.memory, request: c[2], absolute: c[1] & 1 != 0, clock: c[0])
                : try l.sleep(c.memory, request: c[2], remaining: c[3], absolute: c[1] & 1 != 0, clock: c[0]) },
    ]

    // MARK: signals

    private static let signals: [LinuxSystemCall] = [
        .init(13, "rt_sigaction", "sxxu", exitless: .always) { l, c in
            try l.signalAction(c.signed(0), c.memory, new: c[1], old: c[2], size: c[3]) },
        .init(14, "rt_sigprocmask", "dxxu") { l, c in try l.signalMask(how: c[0], c.memory, new: c[1], old: c[2], size: c[3]) },
        .init(34, "pause", "") { l, c in try l.suspend(c.memory, mask: nil, size: 8) },
        .init(130, "rt_sigsuspend", "xu") { l, c in try l.suspend(c.memory, mask: c[0], size: c[1]) },
        .init(131, "sigaltstack", "xx") { l, c in try l.alternateStack(c.memory, new: c[0], old: c[1]) },
        .init(15, "rt_sigreturn", "") { _, _ in .thread(.signalReturn) },
        .init(62, "kill", "ds") { l, c in l.kill(pid: c[0], signal: c[1]) },
        .init(200, "tkill", "ds") { l, c in l.threadKill(process: nil, thread: c[0], signal: c[1]) },
        .init(234, "tgkill", "dds") { l, c in l.threadKill(process: c[0], thread: c[1], signal: c[2]) },
        .init(37, "alarm", "u") { l, c in l.alarm(seconds: c[0]) },
        .init(38, "setitimer", "xxx") { l, c in try l.setTimer(which: c[0], c.memory, new: c[1], old: c[2]) },
    ]

    // MARK: the process: identity, limits, time

    private static let process: [LinuxSystemCall] = [
        .init(39, "getpid", "", exitless: .always) { l, _ in .value(Int64(l.pid)) },
        .init(110, "getppid", "") { l, _ in .value(l.parentProcessID) },  // 0 for pid 1
        .init(111, "getpgrp", "") { l, _ in l.processGroup(of: 0, session: false) },
        .init(109, "setpgid", "dd") { l, c in l.setProcessGroup(c[0], c[1]) },
        .init(112, "setsid", "") { l, _ in l.newSession() },
        .init(121, "getpgid", "d") { l, c in l.processGroup(of: c[0], session: false) },
        .init(124, "getsid", "d") { l, c in l.processGroup(of: c[0], session: true) },
        .init(102, "getuid", "", exitless: .always) { _, _ in .value(0) },
        .init(104, "getgid", "", exitless: .always) { _, _ in .value(0) },
        .init(107, "geteuid", "", exitless: .always) { _, _ in .value(0) },
        .init(108, "getegid", "", exitless: .always) { _, _ in .value(0) },
        .init(115, "getgroups", "xx") { _, _ in .value(0) },
        .init(118, "getresuid", "xxx") { l, c in try l.storeIdentity(c.memory, at: [c[0], c[1], c[2]]) },
        .init(120, "getresgid", "xxx") { l, c in try l.storeIdentity(c.memory, at: [c[0], c[1], c[2]]) },
        // The guest is uid/gid 0 and stays so: "changing" to 0 (posix_spawn's RESETIDS, a
        // daemon dropping to itself) succeeds; any other identity is EPERM.
        .init(105, "setuid", "d") { l, c in l.keepIdentity([c[0]]) },
        .init(106, "setgid", "d") { l, c in l.keepIdentity([c[0]]) },
        .init(113, "setreuid", "dd") { l, c in l.keepIdentity([c[0], c[1]]) },
        .init(114, "setregid", "dd") { l, c in l.keepIdentity([c[0], c[1]]) },
        .init(117, "setresuid", "ddd") { l, c in l.keepIdentity([c[0], c[1], c[2]]) },
        .init(119, "setresgid", "ddd") { l, c in l.keepIdentity([c[0], c[1], c[2]]) },
        .init(116, "setgroups", "ux") { _, c in c[0] == 0 ? .value(0) : fail(.notPermitted) },
        .init(125, "capget", "xx") { _, _ in fail(.notPermitted) },
        .init(95, "umask", "o") { l, c in l.setUmask(c[0]) },
        .init(63, "uname", "x", exitless: .always) { l, c in try l.uname(c.memory, into: c[0]) },
        .init(99, "sysinfo", "x", exitless: .always) { l, c in try l.systemInformation(c.memory, into: c[0]) },
        .init(97, "getrlimit", "dx", exitless: .always) { l, c in try l.limit(resource: c[0], c.memory, old: c[1], new: 0) },
        .init(302, "prlimit64", "ddxx", exitless: .always) { l, c in
            try l.processLimit(pid: c[0], resource: c[1], c.memory, new: c[2], old: c[3]) },
        .init(204, "sched_getaffinity", "dux", exitless: .always) { l, c in try l.affinity(size: c[1], c.memory, into: c[2]) },
        .init(203, "sched_setaffinity", "xxx") { _, _ in .value(0) },
        .init(157, "prctl", "xxxxx") { l, c in try l.processControl(c, c.memory) },
        .init(330, "pkey_alloc", "xx") { _, _ in fail(.noFunction) },
        .init(98, "getrusage", "xx") { l, c in try l.resourceUsage(who: Int32(truncatingIfNeeded: c[0]), c.memory, into: c[1]) },
        .init(100, "times", "x") { l, c in try l.times(c.memory, into: c[0]) },
        .init(228, "clock_gettime", "dx", exitless: .always) { l, c in try l.clockTime(c) },
        .init(229, "clock_getres", "dx", exitless: .always) { l, c in try l.clockResolution(c.memory, into: c[1]) },
        .init(96, "gettimeofday", "xx", exitless: .always) { l, c in try l.timeOfDay(c.memory, into: c[0]) },
        .init(201, "time", "x", exitless: .always) { l, c in try l.time(c.memory, into: c[0]) },
        .init(309, "getcpu", "xxx", exitless: .always) { l, c in try l.processor(c.memory, cpu: c[0], node: c[1]) },
        .init(318, "getrandom", "xux", exitless: .always) { l, c in try l.builtins.handle(c) },
    ]
}
