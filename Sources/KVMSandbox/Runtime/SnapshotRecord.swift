import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot file's header: everything of a `Snapshot` but its memory pages.
struct SnapshotRecord: Codable {
    var configuration: SandboxConfiguration
    var hostProgramPath: String
    var platform: String
    var memorySize: UInt64
    var usedBytes: UInt64
    var tablesRoot: UInt64
    var stackBottom: UInt64
    var program: ProgramRecord
    var interpreter: ProgramRecord?
    var mmapTop: UInt64
    var vcpu: VCPUState
    var allocator: PhysicalPageAllocator
    var builtins: BuiltinHostCalls.State
    var linux: LinuxPersonality.State
    var files: [FileIdentity]

    /// The invariants the host relies on when it forks and runs the snapshot: sizes and
    /// addresses in range, the vCPU in user mode on the snapshot's page tables, the running
    /// thread's index valid, the in-memory files' accounting within their capacity.
    func validate() throws(SnapshotFileError) {
        do { try configuration.validate() } catch { throw .corrupt("configuration: \(error)") }
        guard memorySize == configuration.memorySize, usedBytes <= memorySize, usedBytes % PageSize.bytes == 0,
              allocator.next == usedBytes, allocator.limit <= memorySize else {
            throw .corrupt("memory sizes do not agree")
        }
        guard tablesRoot % PageSize.bytes == 0, tablesRoot < usedBytes, vcpu.specialRegisters.cr3 == tablesRoot else {
            throw .corrupt("the page-table root")
        }
        guard vcpu.specialRegisters.cs.selector & 3 == 3 else { throw .corrupt("the vCPU is not in user mode") }
        guard !linux.threads.isEmpty, linux.threads.count <= configuration.maximumThreads,
              linux.threads.indices.contains(linux.currentThread) else {
            throw .corrupt("the thread table")
        }
        guard linux.memoryFiles.isConsistent else { throw .corrupt("the in-memory files") }
        // Counters the Linux layer increments with checked arithmetic: far from overflowing.
        guard linux.files.isConsistent, (0..<(1 << 40)).contains(linux.nextObject), (0..<(1 << 40)).contains(linux.nextPipe),
              (1..<(Int32.max / 2)).contains(linux.nextThreadID), builtins.outputWritten < 1 << 62 else {
            throw .corrupt("the file table or the Linux layer's counters")
        }
        guard stackBottom < GuestLayout.stackTop, mmapTop < stackBottom, program.imageLower <= program.imageEnd else {
            throw .corrupt("the address-space layout")
        }
    }
}

/// Where a program (or its loader) was loaded; its symbols come from its file again.
struct ProgramRecord: Codable {
    var base: UInt64
    var entry: UInt64
    var programHeaderAddress: UInt64
    var programHeaderCount: Int
    var imageLower: UInt64
    var imageEnd: UInt64
    var path: String?

    init(_ program: LoadedProgram) {
        (base, entry, programHeaderAddress) = (program.base, program.entry, program.programHeaderAddress)
        programHeaderCount = program.programHeaderCount
        (imageLower, imageEnd, path) = (program.imageRange.lowerBound, program.imageEnd, program.path)
    }

    /// The loaded program again, with `elf`'s symbols and debug information.
    func restore(_ elf: ELFFile) -> LoadedProgram {
        var program = LoadedProgram(base: base, entry: entry, programHeaderAddress: programHeaderAddress,
                                    programHeaderCount: programHeaderCount, imageEnd: imageEnd, symbols: elf.symbols,
                                    imageRange: imageLower..<max(imageLower, imageEnd), debugInfo: LazyDebugInfo(elfBytes: elf.bytes))
        program.path = path
        return program
    }
}

/// A file the snapshot depends on, and how to tell it is still the same.
struct FileIdentity: Codable, Equatable {
    enum Role: String, Codable {
        /// The program, by host path.
        case program
        /// The loader or a mapped file, by guest path (opened through the grants).
        case mapped
    }
    var role: Role
    var path: String
    var size: Int64
    var modified: Int64
    var hash: UInt64

    /// The identity of the host file `path`.
    static func of(host path: String, role: Role) throws(SnapshotFileError) -> FileIdentity {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("cannot open \(path): \(Errno.current)") }
        defer { close(fd) }
        return try of(descriptor: fd, path: path, role: role)
    }

    /// The identity of the file the guest sees at `path`.
    static func of(guestPath path: String, in fileSystem: FileSystemView) throws(SnapshotFileError) -> FileIdentity {
        switch fileSystem.open(FileSystemView.normalize(path, cwd: "/"), flags: O_RDONLY, mode: 0) {
        case .failure(let error): throw .io("cannot open \(path) in the guest's view: \(error)")
        case .success(let fd):
            defer { close(fd) }
            return try of(descriptor: fd, path: path, role: .mapped)
        }
    }

    private static func of(descriptor fd: Int32, path: String, role: Role) throws(SnapshotFileError) -> FileIdentity {
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .io("cannot stat \(path): \(Errno.current)") }
        let bytes: [UInt8]
        do { bytes = try readFile(descriptor: fd) } catch { throw .io("cannot read \(path): \(error)") }
        let modified = Int64(status.st_mtim.tv_sec) &* 1_000_000_000 &+ Int64(status.st_mtim.tv_nsec)
        return FileIdentity(role: role, path: path, size: Int64(status.st_size), modified: modified, hash: contentHash(bytes[...]))
    }

    /// Throws unless the host file `host` still has `identity` (nil: the record lacks it).
    static func check(_ identity: FileIdentity?, host: String) throws(SnapshotFileError) {
        guard let identity else { throw .corrupt("the program's identity is missing") }
        try identity.compare(with: try of(host: host, role: .program))
    }

    /// Throws unless the file the guest sees at `path` is still this one.
    func check(in fileSystem: FileSystemView) throws(SnapshotFileError) {
        let now: FileIdentity
        do { now = try Self.of(guestPath: path, in: fileSystem) } catch { throw .fileChanged(path: path, reason: "\(error)") }
        try compare(with: now)
    }

    private func compare(with now: FileIdentity) throws(SnapshotFileError) {
        if now.size != size { throw .fileChanged(path: path, reason: "size \(now.size), was \(size)") }
        if now.hash != hash { throw .fileChanged(path: path, reason: "its contents differ") }
        // The same bytes under a new modification time (a copy, a checkout) are the same file.
    }
}
