/// How `--trace-syscalls` prints results (names and argument counts are the system-call
/// table's: `SystemCallTable`).
enum LinuxTraceFormat {
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
