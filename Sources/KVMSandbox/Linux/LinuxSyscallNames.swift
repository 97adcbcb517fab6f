/// Names and argument counts of Linux x86-64 system calls, for `--trace-syscalls` and the
/// per-call counts in reports.
enum LinuxSyscallNames {
    static let table: [Int: (name: String, arguments: Int)] = [
        0: ("read", 3), 1: ("write", 3), 2: ("open", 3), 3: ("close", 1), 4: ("stat", 2), 5: ("fstat", 2),
        6: ("lstat", 2), 7: ("poll", 3), 8: ("lseek", 3), 9: ("mmap", 6), 10: ("mprotect", 3), 11: ("munmap", 2),
        12: ("brk", 1), 13: ("rt_sigaction", 4), 14: ("rt_sigprocmask", 4), 15: ("rt_sigreturn", 0), 16: ("ioctl", 3),
        17: ("pread64", 4), 18: ("pwrite64", 4), 19: ("readv", 3), 20: ("writev", 3), 21: ("access", 2),
        22: ("pipe", 1), 23: ("select", 5), 24: ("sched_yield", 0), 25: ("mremap", 5), 28: ("madvise", 3),
        32: ("dup", 1), 33: ("dup2", 2), 35: ("nanosleep", 2), 39: ("getpid", 0), 41: ("socket", 3),
        42: ("connect", 3), 43: ("accept", 3), 44: ("sendto", 6), 45: ("recvfrom", 6), 46: ("sendmsg", 3),
        47: ("recvmsg", 3), 48: ("shutdown", 2), 49: ("bind", 3), 50: ("listen", 2), 51: ("getsockname", 3),
        52: ("getpeername", 3), 54: ("setsockopt", 5), 55: ("getsockopt", 5), 288: ("accept4", 4), 56: ("clone", 5), 57: ("fork", 0), 59: ("execve", 3), 60: ("exit", 1), 61: ("wait4", 4),
        62: ("kill", 2), 63: ("uname", 1), 72: ("fcntl", 3), 74: ("fsync", 1), 75: ("fdatasync", 1),
        77: ("ftruncate", 2), 79: ("getcwd", 2), 80: ("chdir", 1), 81: ("fchdir", 1), 82: ("rename", 2),
        83: ("mkdir", 2), 84: ("rmdir", 1), 87: ("unlink", 1), 89: ("readlink", 3), 95: ("umask", 1),
        96: ("gettimeofday", 2), 97: ("getrlimit", 2), 99: ("sysinfo", 1), 102: ("getuid", 0), 104: ("getgid", 0),
        107: ("geteuid", 0), 108: ("getegid", 0), 109: ("setpgid", 2), 110: ("getppid", 0), 111: ("getpgrp", 0),
        112: ("setsid", 0), 115: ("getgroups", 2), 121: ("getpgid", 1), 125: ("capget", 2), 131: ("sigaltstack", 2),
        157: ("prctl", 5), 158: ("arch_prctl", 2), 186: ("gettid", 0), 200: ("tkill", 2), 201: ("time", 1),
        202: ("futex", 6), 203: ("sched_setaffinity", 3), 204: ("sched_getaffinity", 3), 217: ("getdents64", 3),
        218: ("set_tid_address", 1), 221: ("fadvise64", 4), 228: ("clock_gettime", 2), 229: ("clock_getres", 2),
        230: ("clock_nanosleep", 4), 231: ("exit_group", 1), 232: ("epoll_wait", 4), 233: ("epoll_ctl", 4),
        234: ("tgkill", 3), 257: ("openat", 4), 258: ("mkdirat", 3), 262: ("newfstatat", 4), 263: ("unlinkat", 3),
        264: ("renameat", 4), 267: ("readlinkat", 4), 269: ("faccessat", 3), 270: ("pselect6", 6), 271: ("ppoll", 5),
        273: ("set_robust_list", 2), 281: ("epoll_pwait", 6), 284: ("eventfd", 1), 290: ("eventfd2", 2),
        291: ("epoll_create1", 1), 292: ("dup3", 3), 293: ("pipe2", 2), 302: ("prlimit64", 4), 316: ("renameat2", 5),
        318: ("getrandom", 3), 330: ("pkey_alloc", 2), 332: ("statx", 5), 334: ("rseq", 4), 435: ("clone3", 2),
        439: ("faccessat2", 4), 76: ("truncate", 2), 85: ("creat", 2), 90: ("chmod", 2), 91: ("fchmod", 2),
        92: ("chown", 3), 93: ("fchown", 3), 94: ("lchown", 3), 98: ("getrusage", 2), 100: ("times", 1),
        132: ("utime", 2), 137: ("statfs", 2), 138: ("fstatfs", 2), 149: ("mlock", 2), 150: ("munlock", 2),
        151: ("mlockall", 1), 152: ("munlockall", 0), 235: ("utimes", 2), 260: ("fchownat", 5), 261: ("futimesat", 3),
        268: ("fchmodat", 3), 280: ("utimensat", 4), 285: ("fallocate", 4), 325: ("mlock2", 3), 452: ("fchmodat2", 4),
        213: ("epoll_create", 1), 73: ("flock", 2), 283: ("timerfd_create", 2), 286: ("timerfd_settime", 4), 287: ("timerfd_gettime", 2), 86: ("link", 2), 88: ("symlink", 2), 265: ("linkat", 5), 266: ("symlinkat", 3), 53: ("socketpair", 4), 40: ("sendfile", 4), 326: ("copy_file_range", 6),
    ]

    static func name(_ number: Int) -> String { table[number]?.name ?? "syscall_\(number)" }
    static func argumentCount(_ number: Int) -> Int { table[number]?.arguments ?? 6 }

    /// A result as strace prints it: the value, or `-1 ENOENT (errno 2)`.
    static func describe(result: Int64) -> String {
        guard result < 0, result > -4096 else { return result > 0xffff ? "0x" + String(result, radix: 16) : String(result) }
        return "-\(-result) (\(errnoName(Int32(-result))))"
    }

    static func errnoName(_ code: Int32) -> String {
        let names: [Int32: String] = [1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 9: "EBADF", 11: "EAGAIN",
                                      12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 17: "EEXIST", 20: "ENOTDIR", 21: "EISDIR",
                                      22: "EINVAL", 24: "EMFILE", 25: "ENOTTY", 27: "EFBIG", 29: "ESPIPE", 30: "EROFS",
                                      32: "EPIPE", 34: "ERANGE", 36: "ENAMETOOLONG", 38: "ENOSYS", 40: "ELOOP",
                                      16: "EBUSY", 18: "EXDEV", 28: "ENOSPC", 95: "EOPNOTSUPP", 110: "ETIMEDOUT"]
        return names[code] ?? "errno \(code)"
    }
}
