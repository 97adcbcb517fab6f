import SystemPackage

/// A KVM ioctl (or the system call around it) failed.
public struct KVMError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The operation that failed, e.g. `KVM_CREATE_VM`.
    public let operation: String
    /// The errno the kernel returned.
    public let errno: Errno

    /// Creates an error for `operation` failing with `errno`.
    public init(_ operation: String, _ errno: Errno) {
        self.operation = operation
        self.errno = errno
    }

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String { "\(operation) failed: \(errno) (errno \(errno.rawValue))" }
}

/// Calls ioctl(2) with an integer argument, turning -1 into a `KVMError`.
@discardableResult
func kvmIoctl(_ fd: FileDescriptor, _ request: UInt, _ argument: UInt = 0, _ operation: String) throws(KVMError) -> Int32 {
    let result = ckvmIoctl(fd.rawValue, request, argument)
    if result < 0 { throw KVMError(operation, Errno.current) }
    return result
}

/// Calls ioctl(2) with a pointer to `value`, turning -1 into a `KVMError`.
@discardableResult
func kvmIoctl<T>(_ fd: FileDescriptor, _ request: UInt, _ value: inout T, _ operation: String) throws(KVMError) -> Int32 {
    let result = withUnsafeMutablePointer(to: &value) { ckvmIoctlPointer(fd.rawValue, request, $0) }
    if result < 0 { throw KVMError(operation, Errno.current) }
    return result
}

extension Errno {
    /// The calling thread's errno.
    static var current: Errno { Errno(rawValue: systemErrno()) }
}
