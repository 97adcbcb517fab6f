import CHost
import FoundationEssentials
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Snapshots on disk: `Snapshot.write(to:)` saves one, `Snapshot(contentsOf:)` loads it in
/// another process (or on another machine with the same files), ready to fork.
///
/// The file holds the guest's memory pages in use (all-zero pages left out), the whole vCPU
/// state, the page-table root and page allocator, the host-call and Linux-layer state (fd
/// table, threads, signal actions, in-memory files, virtual sockets) and the configuration; the
/// program and the files it mapped (its loader, its libraries) are named with their size,
/// modification time and a hash of their contents, and loading refuses the snapshot if any
/// changed. Layout (little-endian):
///
///     "KVMSNAP\0"  format version (UInt32)  flags (UInt32: bit 0, keyed)
///     header length (UInt64)  header (JSON: `SnapshotRecord`)
///     page count (UInt64)  page numbers (UInt64 each, ascending)  pages (4096 bytes each)
///     checksum (UInt64) of everything before it
///     [keyed: HMAC-SHA256 (32 bytes) of everything before it]
///
/// The checksum detects truncation and corruption, not tampering. A file written with a
/// `SnapshotKey` carries an HMAC-SHA256 tag; loading with the key verifies it before anything
/// else is parsed, and refuses an unkeyed file, so a file edited to widen its policy is refused.
/// Without a key a snapshot file is as trusted as whoever could write it. Files are written mode
/// 0600 (they hold the environment). Parsing never traps on any input (fuzzed:
/// `Fuzz/FuzzSnapshotFile`), and loading checks the invariants the host relies on.
extension Snapshot {
    /// The snapshot file format version this build writes and reads.
    /// (2: keyed files, the layout randomization setting, host budgets, the guest's CPU time.)
    public static let fileFormatVersion: UInt32 = 3
    static let fileMagic = Array("KVMSNAP\0".utf8)
    /// The header flag of a keyed file (an HMAC-SHA256 tag follows the checksum).
    static let keyedFlag: UInt32 = 1

    /// Writes this snapshot to `path` (atomically: a temporary file renamed over it). Throws
    /// when the guest holds host files open (they cannot be carried to another process) or the
    /// files it mapped cannot be read to identify them.
    /// With `key`, the file carries an HMAC-SHA256 tag that loading with the same key verifies.
    public func write(to path: String, key: SnapshotKey? = nil) throws(SnapshotFileError) {
        // A parked snapshot is derived in memory, cheaply: write the snapshot it came from.
        guard parking == nil else { throw .incompatible("a parked snapshot is not written to a file; write the one it was parked from") }
        for file in linux.files.descriptions.values {
            switch file.kind {
            case .host, .directory(_, .some), .connection:
                throw .openHostFile(path: file.path.isEmpty ? "(a connection)" : file.path)
            default: break
            }
        }
        guard linux.pendingConnections.isEmpty else { throw .openHostFile(path: "(a pending connection)") }
        guard let hostProgramPath else { throw .io("the snapshot's program was not loaded from a file") }
        let record = SnapshotRecord(
            configuration: configuration, hostProgramPath: hostProgramPath, platform: system.platform.rawValue,
            memorySize: memory.size, usedBytes: usedBytes, tablesRoot: tablesRoot, stackBottom: stackBottom,
            program: ProgramRecord(image.program), interpreter: image.interpreter.map(ProgramRecord.init), mmapTop: image.mmapTop,
            vcpu: vcpuState, allocator: allocator, builtins: builtins, linux: linux,
            files: try identities(of: fileSystem, hostProgramPath: hostProgramPath))
        let flags: UInt32 = key == nil ? 0 : Self.keyedFlag
        var output = Self.fileMagic + Self.fileFormatVersion.littleEndianBytes + flags.littleEndianBytes
        let header: Data
        do { header = try JSONEncoder().encode(record) } catch { throw .io("cannot encode the snapshot: \(error)") }
        output += UInt64(header.count).littleEndianBytes + Array(header)
        var pages: [UInt64] = []
        for page in 0..<usedBytes / PageSize.bytes {
            let zero = memory.withBytes(at: page << PageSize.shift, count: Int(PageSize.bytes)) { bytes in
                bytes.allSatisfy { $0 == 0 }
            }
            if !zero { pages.append(page) }
        }
        output += UInt64(pages.count).littleEndianBytes
        for page in pages { output += page.littleEndianBytes }
        output.reserveCapacity(output.count + pages.count * Int(PageSize.bytes) + 8)
        for page in pages {
            memory.withBytes(at: page << PageSize.shift, count: Int(PageSize.bytes)) { output.append(contentsOf: $0) }
        }
        output += contentHash(output[...]).littleEndianBytes
        if let key { output += key.tag(output[...]) }
        do { try replaceFile(path, with: output) } catch {
            throw .io("cannot write \(path): \(error)")
        }
    }

    /// Loads a snapshot written by `write(to:)`. Refuses it, with the reason, when it is not a
    /// snapshot, comes from another format version or platform, is truncated or corrupt, or
    /// when the program or a file it mapped changed since. With `key`, the file must carry a tag
    /// that verifies with it (`SnapshotFileError.unauthenticated` otherwise); without one, a
    /// keyed file is refused too (it cannot be verified).
    public convenience init(contentsOf path: String, key: SnapshotKey? = nil, system given: KVMSystem? = nil) throws(SnapshotFileError) {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: Int(GuestMemory.maximumSize) + (256 << 20)) } catch {
            throw .io("cannot read \(path): \(error)")
        }
        let parsed = try Self.parse(bytes, verifyingChecksum: true, key: key, requiringKey: true)
        let record = parsed.record
        let system: KVMSystem
        do { system = try given ?? KVMSystem.shared() } catch { throw .io("\(error)") }
        guard record.platform == system.platform.rawValue else {
            throw .incompatible("taken on \(record.platform), this machine's KVM is \(system.platform.rawValue)")
        }
        // The program's file, and the guest's view of the files as it was.
        try FileIdentity.check(record.files.first { $0.role == .program }, host: record.hostProgramPath)
        let programBytes: [UInt8], elf: ELFFile
        do {
            programBytes = try readFile(record.hostProgramPath)
            elf = try ELFFile(bytes: programBytes)
        } catch {
            throw .fileChanged(path: record.hostProgramPath, reason: "\(error)")
        }
        let fileSystem: FileSystemView
        do {
            fileSystem = try Sandbox.fileSystem(for: record.configuration, interpreter: elf.interpreter, hostPath: record.hostProgramPath)
        } catch {
            throw .fileChanged(path: record.hostProgramPath, reason: "the granted files: \(error)")
        }
        for identity in record.files where identity.role != .program {
            try identity.check(in: fileSystem)
        }
        var interpreter: LoadedProgram?
        if let loader = record.interpreter {
            guard let loaderPath = loader.path, elf.interpreter == loaderPath else { throw .corrupt("the loader does not match the program") }
            do { interpreter = loader.restore(try ProgramImage.readLoader(loaderPath, fileSystem: fileSystem)) } catch {
                throw .fileChanged(path: loaderPath, reason: "\(error)")
            }
        }
        let memory: GuestMemory
        do { memory = try GuestMemory(size: record.memorySize) } catch { throw .io("\(error)") }
        for (index, page) in parsed.pageNumbers.enumerated() {
            let start = parsed.pagesOffset + index * Int(PageSize.bytes)
            memory.write(bytes[start..<start + Int(PageSize.bytes)], at: page << PageSize.shift)
        }
        let image = ProgramImage(program: record.program.restore(elf), interpreter: interpreter, mmapTop: record.mmapTop)
        self.init(configuration: record.configuration, image: image, usedBytes: record.usedBytes, system: system, memory: memory,
                  vcpuState: record.vcpu, tablesRoot: record.tablesRoot, allocator: record.allocator, builtins: record.builtins,
                  linux: record.linux, fileSystem: fileSystem, stackBottom: record.stackBottom, hostProgramPath: record.hostProgramPath)
    }

    /// The snapshot file's parts: the record, the guest-physical page numbers, and where the
    /// pages' bytes start. Validates everything the host indexes by; never traps.
    /// With `requiringKey`, the tag is checked first: a keyed file needs `key`, and `key` needs
    /// a keyed file whose tag verifies (the fuzzer parses without, to reach the rest).
    static func parse(_ bytes: [UInt8], verifyingChecksum: Bool, key: SnapshotKey? = nil,
                      requiringKey: Bool = false) throws(SnapshotFileError) -> (record: SnapshotRecord, pageNumbers: [UInt64], pagesOffset: Int) {
        guard bytes.count >= 16, Array(bytes[0..<8]) == fileMagic else { throw .notASnapshot }
        let version = UInt32(littleEndianBytes: bytes[8..<12])
        guard version == fileFormatVersion else { throw .incompatible("format version \(version), this build reads \(fileFormatVersion)") }
        let flags = UInt32(littleEndianBytes: bytes[12..<16])
        guard flags & ~keyedFlag == 0 else { throw .corrupt("unknown flags \(String(flags, radix: 16))") }
        let keyed = flags & keyedFlag != 0
        let tagBytes = keyed ? SnapshotKey.tagBytes : 0
        guard bytes.count >= 16 + tagBytes else { throw .truncated }
        if requiringKey {
            switch (keyed, key) {
            case (false, nil): break
            case (true, nil): throw .unauthenticated("the file is keyed; give the key it was written with")
            case (false, .some): throw .unauthenticated("the file carries no tag, and a key was given")
            case (true, .some(let key)):
                let end = bytes.count - tagBytes
                guard key.verifies(bytes[end...], of: bytes[..<end]) else { throw .unauthenticated("its tag does not verify with the key") }
            }
        }
        let body = bytes.count - tagBytes
        var cursor = 16
        func take(_ count: Int) throws(SnapshotFileError) -> ArraySlice<UInt8> {
            guard count >= 0, count <= body - cursor else { throw .truncated }
            defer { cursor += count }
            return bytes[cursor..<cursor + count]
        }
        let headerLength = UInt64(littleEndianBytes: try take(8))
        guard headerLength <= 256 << 20 else { throw .corrupt("a header of \(headerLength) bytes") }
        let header = try take(Int(headerLength))
        let pageCount = UInt64(littleEndianBytes: try take(8))
        guard pageCount <= GuestMemory.maximumSize / PageSize.bytes else { throw .corrupt("\(pageCount) pages") }
        let numbers = try take(Int(pageCount) * 8)
        let pagesOffset = cursor
        _ = try take(Int(pageCount) * Int(PageSize.bytes))
        let checksum = UInt64(littleEndianBytes: try take(8))
        guard cursor == body else { throw .corrupt("\(body - cursor) bytes after the end") }
        if verifyingChecksum, contentHash(bytes[..<(body - 8)]) != checksum { throw .checksumMismatch }
        let record: SnapshotRecord
        do { record = try JSONDecoder().decode(SnapshotRecord.self, from: Data(header)) } catch {
            throw .corrupt("the header does not decode: \(error)")
        }
        var pageNumbers: [UInt64] = []
        pageNumbers.reserveCapacity(Int(pageCount))
        for index in 0..<Int(pageCount) {
            let start = numbers.startIndex + index * 8
            let page = UInt64(littleEndianBytes: numbers[start..<start + 8])
            guard page < record.usedBytes / PageSize.bytes, pageNumbers.last.map({ page > $0 }) ?? true else {
                throw .corrupt("page number \(page) out of order or past the pages in use")
            }
            pageNumbers.append(page)
        }
        try record.validate()
        return (record, pageNumbers, pagesOffset)
    }

    /// Size, modification time and content hash of the program, its loader and every file it
    /// mapped (opened through the guest's view, so a changed grant is noticed too).
    private func identities(of fileSystem: FileSystemView, hostProgramPath: String) throws(SnapshotFileError) -> [FileIdentity] {
        var result = [try FileIdentity.of(host: hostProgramPath, role: .program)]
        var paths = image.interpreter?.path.map { [$0] } ?? []
        for mapping in linux.fileMappings where !paths.contains(mapping.path) { paths.append(mapping.path) }
        for path in paths { result.append(try FileIdentity.of(guestPath: path, in: fileSystem)) }
        return result
    }
}

/// Why a snapshot file could not be written or was refused.
public enum SnapshotFileError: Error, Equatable, CustomStringConvertible {
    /// The file does not start like a snapshot.
    case notASnapshot
    /// Another format version, or taken on another kind of KVM.
    case incompatible(String)
    /// The file ends early.
    case truncated
    /// The contents do not match the checksum.
    case checksumMismatch
    /// The contents are inconsistent (a bad header, pages out of range).
    case corrupt(String)
    /// The program or a file it mapped differs from when the snapshot was taken.
    case fileChanged(path: String, reason: String)
    /// The guest holds a host file or connection open, which a file cannot carry.
    case openHostFile(path: String)
    /// A keyed file whose tag does not verify with the key, a keyed file loaded without its
    /// key, or an unkeyed file loaded with one.
    case unauthenticated(String)
    /// Reading or writing failed.
    case io(String)

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String {
        switch self {
        case .notASnapshot: return "not a kvmsandbox snapshot file"
        case .incompatible(let why): return "incompatible snapshot: \(why)"
        case .truncated: return "the snapshot file is truncated"
        case .checksumMismatch: return "the snapshot file is corrupt (checksum mismatch)"
        case .corrupt(let why): return "the snapshot file is corrupt: \(why)"
        case .fileChanged(let path, let reason): return "\(path) changed since the snapshot was taken (\(reason))"
        case .openHostFile(let path): return "the guest holds \(path) open; snapshots with open host files cannot be saved"
        case .unauthenticated(let why): return "the snapshot file is not authenticated: \(why)"
        case .io(let why): return why
        }
    }
}

/// A 64-bit hash of `bytes` (word by word, multiply-xorshift): detects corruption, fast enough
/// for hundreds of MiB; not cryptographic.
func contentHash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325 ^ UInt64(bytes.count)
    let words = bytes.count / 8
    for index in 0..<words {
        hash = (hash ^ bytes.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) &* 0x0000_0100_0000_01b3
        hash ^= hash >> 29
    }
    var tail: UInt64 = 0
    for index in words * 8..<bytes.count { tail |= UInt64(bytes[index]) << ((index - words * 8) * 8) }
    hash = (hash ^ tail ^ UInt64(bytes.count % 8)) &* 0x0000_0100_0000_01b3
    return hash ^ (hash >> 31)
}

/// `contentHash` of an array or a slice of one.
func contentHash(_ bytes: ArraySlice<UInt8>) -> UInt64 { bytes.withUnsafeBytes { contentHash($0) } }

/// Replaces the file at `path` with `bytes`, atomically and without following links: a new
/// file (mode 0600: snapshots hold `--env` values, reports hold registers) is created next to
/// it with `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name, written, synced, and renamed over
/// `path`. A link planted at `path` or at the temporary name (by a guest with a writable grant
/// there) is replaced or refused, never written through.
package func replaceFile(_ path: String, with bytes: [UInt8]) throws(Errno) {
    var suffix: UInt64 = 0
    _ = withUnsafeMutableBytes(of: &suffix) { chost_getrandom($0.baseAddress!, 8) }
    let temporary = path + ".partial-\(getpid())-\(String(suffix, radix: 16))"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw Errno.current }
    do throws(Errno) {
        defer { close(fd) }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, bytes.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Errno.current
            }
            written += n
        }
        guard fsync(fd) == 0 else { throw Errno.current }
        guard rename(temporary, path) == 0 else { throw Errno.current }
    } catch {
        unlink(temporary)
        throw error
    }
}
