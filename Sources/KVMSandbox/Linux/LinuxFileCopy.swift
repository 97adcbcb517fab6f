import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `sendfile` and `copy_file_range` between host files: copied by the host kernel at explicit
/// offsets (nothing passes through guest memory), within the disk quota. Between other kinds of
/// descriptor (pipes, the tmpfs, sockets) they answer `EINVAL`, as Linux does for descriptors it
/// cannot copy between; `cp`, Python's `shutil` and the rest then fall back to read and write.
extension LinuxPersonality {
    /// `copy_file_range(in, &in_offset, out, &out_offset, count, flags)`.
    func copyFileRange(input: Int64, _ memory: GuestMemoryView, inputOffset: UInt64, output: Int64, outputOffset: UInt64,
                       count: UInt64, flags: UInt64) throws -> HostCallEffect {
        guard flags == 0 else { return Self.fail(.invalidArgument) }
        guard let target = state.files[output], target.writable else { return Self.fail(.badFileDescriptor) }
        guard target.statusFlags & O_APPEND == 0 else { return Self.fail(.badFileDescriptor) }
        return try copy(from: input, memory, inputOffsetAt: inputOffset, to: output, outputOffsetAt: outputOffset, count: count)
    }

    /// `sendfile(out, in, &offset, count)`: from `offset` (or the input's position) to the
    /// output's position.
    func sendFile(output: Int64, input: Int64, _ memory: GuestMemoryView, offset: UInt64, count: UInt64) throws -> HostCallEffect {
        guard let target = state.files[output], target.writable else { return Self.fail(.badFileDescriptor) }
        guard target.statusFlags & O_APPEND == 0 else { return Self.fail(.invalidArgument) }
        return try copy(from: input, memory, inputOffsetAt: offset, to: output, outputOffsetAt: 0, count: count)
    }

    /// Copies up to `count` bytes (at most `transferLimit` per call, as a write) from host file
    /// `input` to host file `output`. An offset address of 0 means the descriptor's own position
    /// (then advanced); otherwise the offset is read there and the new one written back.
    private func copy(from input: Int64, _ memory: GuestMemoryView, inputOffsetAt inputAddress: UInt64, to output: Int64,
                      outputOffsetAt outputAddress: UInt64, count: UInt64) throws -> HostCallEffect {
        guard let source = state.files[input], source.readable, let target = state.files[output] else { return Self.fail(.badFileDescriptor) }
        guard case .host(let from) = source.kind, case .host(let to) = target.kind else { return Self.fail(.invalidArgument) }
        var inputOffset = inputAddress == 0 ? source.offset : try memory.load(UInt64.self, at: inputAddress)
        var outputOffset = outputAddress == 0 ? target.offset : try memory.load(UInt64.self, at: outputAddress)
        guard inputOffset <= UInt64(Int64.max), outputOffset <= UInt64(Int64.max) else { return Self.fail(.invalidArgument) }
        var length = Int(min(count, UInt64(Self.transferLimit)))
        var before = stat()
        if let allowance = diskAllowance {
            guard allowance > 0 || length == 0 else { return Self.fail(.noSpace) }
            length = min(length, allowance)
            guard fstat(to.fd, &before) == 0 else { return Self.fail(Errno.current) }
        }
        defer {
            var after = stat()
            if diskQuota != nil, fstat(to.fd, &after) == 0 { chargeDisk(Int(after.st_blocks - before.st_blocks) * 512) }
        }
        var copied = 0
        if length > 0 {
            var a = Int64(inputOffset), b = Int64(outputOffset)
            let n = chost_copy_file_range(from.fd, &a, to.fd, &b, UInt(length))
            if n >= 0 {
                copied = n
            } else if [EXDEV, EINVAL, EOPNOTSUPP, ENOSYS].contains(errno) {
                // Across file systems (or where the host cannot): through a host buffer.
                var buffer = [UInt8](repeating: 0, count: length)
                let read = buffer.withUnsafeMutableBytes { pread(from.fd, $0.baseAddress!, length, off_t(inputOffset)) }
                guard read >= 0 else { return Self.fail(Errno.current) }
                let written = buffer.withUnsafeBytes { read == 0 ? 0 : pwrite(to.fd, $0.baseAddress!, read, off_t(outputOffset)) }
                guard written >= 0 else { return Self.fail(Errno.current) }
                copied = written
            } else {
                return Self.fail(Errno.current)
            }
        }
        inputOffset += UInt64(copied)
        outputOffset += UInt64(copied)
        if inputAddress == 0 { state.files.update(input) { $0.offset = inputOffset } } else { try memory.store(inputOffset, at: inputAddress) }
        if outputAddress == 0 { state.files.update(output) { $0.offset = outputOffset } } else { try memory.store(outputOffset, at: outputAddress) }
        return .value(Int64(copied))
    }
}
