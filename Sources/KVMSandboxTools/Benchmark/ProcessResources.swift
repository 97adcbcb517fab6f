import KVMSandbox
#if canImport(Glibc)
import Glibc
#endif

/// This process's resources, from /proc: what leak checks (tests) and the benchmark's flatness
/// figures compare before and after many VMs.
public enum ProcessResources {
    /// Open file descriptors (entries of /proc/self/fd).
    public static var openFileDescriptors: Int {
        guard let directory = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { count += 1 }
        }
        return count - 1  // the descriptor opendir itself holds
    }

    /// Memory mappings (lines of /proc/self/maps).
    public static var mappings: Int {
        ((try? readFile("/proc/self/maps")) ?? []).reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
    }

    /// Resident memory in bytes (VmRSS of /proc/self/status).
    public static var residentBytes: Int {
        let status = String(decoding: (try? readFile("/proc/self/status")) ?? [], as: UTF8.self)
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
    }
}
