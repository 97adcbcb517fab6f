/// How `--trace-syscalls` prints results (names and argument counts are the system-call
/// table's: `SystemCallTable`).
enum LinuxTraceFormat {
    /// Argument `value` as a trace shows it, by its kind (`LinuxSystemCall.argumentKinds`): a
    /// path or string is read from guest memory (at most 96 bytes, shown escaped, `...` past
    /// that; the address when it cannot be read), a descriptor in decimal (`AT_FDCWD` by name),
    /// a signal by name.
    static func argument(_ value: UInt64, kind: Character, memory: GuestMemoryView) -> String {
        switch kind {
        case "d": return String(Int64(bitPattern: value))
        case "u": return String(value)
        case "o": return value == 0 ? "0" : "0" + String(value, radix: 8)
        case "f":
            let fd = Int32(truncatingIfNeeded: value)
            return fd == -100 ? "AT_FDCWD" : String(fd)
        case "s": return signalName(Int(Int32(truncatingIfNeeded: value)))
        case "p":
            guard value != 0 else { return "NULL" }
            guard let bytes = try? memory.readCString(value, maxLength: 4095) else { return "0x" + String(value, radix: 16) }
            return quoted(Array(bytes.utf8.prefix(96))) + (bytes.utf8.count > 96 ? "..." : "")
        default: return "0x" + String(value, radix: 16)
        }
    }

    /// `bytes` in double quotes, with quotes, backslashes and non-printing bytes escaped.
    static func quoted(_ bytes: [UInt8]) -> String {
        var text = "\""
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\""): text += "\\\""
            case UInt8(ascii: "\\"): text += "\\\\"
            case UInt8(ascii: "\n"): text += "\\n"
            case 0x20..<0x7f: text.unicodeScalars.append(Unicode.Scalar(byte))
            default: text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text + "\""
    }

    /// `SIGTERM` for 15, `SIGRT_3` past 31, the number itself when it is not a signal.
    static func signalName(_ number: Int) -> String {
        let names = ["SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL", "SIGUSR1",
                     "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP",
                     "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH",
                     "SIGIO", "SIGPWR", "SIGSYS"]
        if (1...31).contains(number) { return names[number - 1] }
        if (32...64).contains(number) { return "SIGRT_\(number - 32)" }
        return String(number)
    }

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
