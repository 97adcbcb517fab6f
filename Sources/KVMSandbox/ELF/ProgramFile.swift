import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The largest ELF file the host reads (symbols and debug information included).
package let maximumELFFileSize = 1 << 30

/// Reads a whole regular file (the guest ELF), refusing anything else (a device such as
/// `/dev/zero`, a pipe, a directory) and files over `limit` before reading a byte.
package func readFile(_ path: String, limit: Int = maximumELFFileSize) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw Errno.current }
    defer { close(fd) }
    return try readFile(descriptor: fd, limit: limit)
}

/// The whole regular file open at `fd` (not closed), refused before reading when it is not a
/// regular file or larger than `limit`.
func readFile(descriptor fd: Int32, limit: Int = maximumELFFileSize) throws -> [UInt8] {
    var status = stat()
    guard fstat(fd, &status) == 0 else { throw Errno.current }
    guard status.st_mode & S_IFMT == S_IFREG else { throw FileRefusal.notARegularFile }
    guard status.st_size <= limit else { throw FileRefusal.tooLarge(bytes: Int64(status.st_size), limit: limit) }
    let size = Int(status.st_size)
    var bytes = [UInt8](repeating: 0, count: size)
    var filled = 0
    while filled < size {
        let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, size - filled) }
        if n < 0 {
            if errno == EINTR { continue }
            throw Errno.current
        }
        if n == 0 { break }  // the file shrank while we read it
        filled += n
    }
    return Array(bytes.prefix(filled))
}

/// Why `readFile` refused a file before reading it.
enum FileRefusal: Error, CustomStringConvertible {
    case notARegularFile
    case tooLarge(bytes: Int64, limit: Int)

    var description: String {
        switch self {
        case .notARegularFile: return "not a regular file"
        case .tooLarge(let bytes, let limit): return "\(bytes) bytes is larger than the \(limit >> 20) MiB limit for a program"
        }
    }
}
