import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where the guest's standard input comes from.
public enum InputSource: Sendable, Equatable, Codable {
    /// Reads return end of file.
    case empty
    /// These bytes (a reset rewinds them).
    case bytes([UInt8])
    /// A host file descriptor (not closed by the sandbox). A read waits for data at most until
    /// the run's deadline.
    case fileDescriptor(Int32)
}

/// A host file descriptor the guest's file table refers to; closed when the last table that
/// holds it (a run's, a snapshot's) is gone. The host never seeks it: offsets are the guest's
/// (`OpenFile.offset`) and reads and writes are positional, so VMs share an offset only when
/// the guest forked (`SharedOffset`), never through the host's descriptor.
///
/// (@unchecked: only an immutable descriptor number; the kernel serializes what is done with it.)
final class HostFile: @unchecked Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}

/// The offset of an open file description that several processes hold (after a `fork`, as
/// on Linux: `{ cmd1; cmd2; } > log` appends one after the other). Atomic: processes run on
/// host threads of their own.
final class SharedOffset: Sendable {
    private let cell: Atomic<UInt64>
    init(_ value: UInt64) { cell = Atomic(value) }
    var value: UInt64 {
        get { cell.load(ordering: .sequentiallyConsistent) }
        set { cell.store(newValue, ordering: .sequentiallyConsistent) }
    }
}

/// An open file description (what `dup` shares): what it reads and writes, its offset and flags.
struct OpenFile: Codable {
    enum Kind: Codable {
        /// The run's standard input.
        case standardInput
        /// The run's stdout (1) or stderr (2), whatever guest fd it is installed at.
        case output(stream: Int32)
        /// A regular file beneath a grant.
        case host(HostFile)
        /// A directory: its entries, read once at open, in `getdents64` records.
        case directory(entries: [UInt8], host: HostFile?)
        /// Synthesized contents (`/proc/meminfo`, `/sys/devices/system/cpu/online`).
        case memory([UInt8])
        /// A file in an in-memory tree (`--tmpfs`), by path.
        case memoryFile(path: String)
        /// One end of the pipe `LinuxPersonality.State.pipes[id]`.
        case pipe(id: Int, writeEnd: Bool)
        /// An epoll set: `LinuxPersonality.State.epolls[id]`.
        case epoll(id: Int)
        /// An eventfd: `LinuxPersonality.State.eventCounters[id]`.
        case eventCounter(id: Int)
        /// A socket with no host counterpart (socket mode): `LinuxPersonality.State.sockets[id]`.
        case socket(id: Int)
        /// A connection the embedder accepted and the guest's `accept` returned (socket mode).
        case connection(HostFile)
        case null, zero, random
    }
    var kind: Kind
    /// The offset: this description's own, or the one it shares with other processes.
    var offset: UInt64 {
        get { shared?.value ?? ownOffset }
        set { if let shared { shared.value = newValue } else { ownOffset = newValue } }
    }
    private var ownOffset: UInt64 = 0
    /// Set once a `fork` made other processes hold this description.
    private(set) var shared: SharedOffset?
    /// `O_ACCMODE | O_APPEND | O_NONBLOCK` as the guest opened it.
    var statusFlags: Int32
    /// The guest path it was opened by ("" for the standard streams).
    var path: String
    /// Whether `mmap` may map it executable: a regular file opened through a read-only grant.
    var executable = false

    init(kind: Kind, statusFlags: Int32, path: String, executable: Bool = false) {
        (self.kind, self.statusFlags, self.path, self.executable) = (kind, statusFlags, path, executable)
    }

    private enum CodingKeys: String, CodingKey { case kind, offset, statusFlags, path, executable }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        kind = try container.decode(Kind.self, forKey: .kind)
        ownOffset = try container.decode(UInt64.self, forKey: .offset)
        statusFlags = try container.decode(Int32.self, forKey: .statusFlags)
        path = try container.decode(String.self, forKey: .path)
        executable = try container.decode(Bool.self, forKey: .executable)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(kind, forKey: .kind)
        try container.encode(offset, forKey: .offset)
        try container.encode(statusFlags, forKey: .statusFlags)
        try container.encode(path, forKey: .path)
        try container.encode(executable, forKey: .executable)
    }

    /// Makes the offset one that copies of this description share (a `fork` is about to copy it).
    mutating func shareOffset() { if shared == nil { shared = SharedOffset(ownOffset) } }

    /// Makes the offset this description's own again, at its current value (a snapshot's copy).
    mutating func detachOffset() {
        ownOffset = offset
        shared = nil
    }

    /// Neither for an `O_PATH` descriptor (it only names its file).
    var readable: Bool { statusFlags & 0o10000000 == 0 && statusFlags & O_ACCMODE != O_WRONLY }
    var writable: Bool { statusFlags & 0o10000000 == 0 && statusFlags & O_ACCMODE != O_RDONLY }
}

/// The guest's file descriptors: Linux's lowest-free numbering, close-on-exec flags, and open
/// file descriptions shared by `dup`. A value: a snapshot copies it, a reset puts it back.
struct FileTable: Codable {
    struct Entry: Codable {
        var description: Int
        var closeOnExec: Bool
    }
    private(set) var descriptions: [Int: OpenFile] = [:]
    private(set) var entries: [Int32: Entry] = [:]
    private var nextDescription = 0
    /// `RLIMIT_NOFILE`: descriptors are 0 ..< limit.
    static let limit: Int32 = 1024

    /// The table a run starts with: stdin, stdout, stderr.
    static func standard() -> FileTable {
        var table = FileTable()
        _ = table.install(OpenFile(kind: .standardInput, statusFlags: O_RDONLY, path: ""), lowest: 0)
        _ = table.install(OpenFile(kind: .output(stream: 1), statusFlags: O_WRONLY, path: ""), lowest: 1)
        _ = table.install(OpenFile(kind: .output(stream: 2), statusFlags: O_WRONLY, path: ""), lowest: 2)
        return table
    }

    /// Whether the table is one the host could have built (a table read from a snapshot file):
    /// descriptors in range, each naming a description that exists, and a next description id
    /// the table's increments cannot overflow.
    var isConsistent: Bool {
        (0..<(1 << 40)).contains(nextDescription)
            && entries.allSatisfy { (0..<Self.limit).contains($0.key) && descriptions[$0.value.description] != nil }
            && descriptions.keys.allSatisfy { (0..<nextDescription).contains($0) }
    }

    /// The open file behind `fd`.
    subscript(fd: Int64) -> OpenFile? {
        guard let entry = entry(fd) else { return nil }
        return descriptions[entry.description]
    }

    func entry(_ fd: Int64) -> Entry? {
        guard fd >= 0, fd < Int64(Self.limit) else { return nil }
        return entries[Int32(fd)]
    }

    /// Changes the open file behind `fd` (its offset, flags).
    mutating func update(_ fd: Int64, _ body: (inout OpenFile) -> Void) {
        guard let entry = entry(fd), var file = descriptions[entry.description] else { return }
        body(&file)
        descriptions[entry.description] = file
    }

    /// Installs a new description at the lowest free descriptor `>= lowest`; nil when full (EMFILE).
    mutating func install(_ file: OpenFile, lowest: Int32 = 0, closeOnExec: Bool = false) -> Int32? {
        guard let fd = lowestFree(from: lowest) else { return nil }
        descriptions[nextDescription] = file
        entries[fd] = Entry(description: nextDescription, closeOnExec: closeOnExec)
        nextDescription += 1
        return fd
    }

    /// `dup`-style: another descriptor for the same description.
    mutating func duplicate(_ fd: Int64, lowest: Int32 = 0, at target: Int32? = nil, closeOnExec: Bool = false) -> Int32? {
        guard let entry = entry(fd) else { return nil }
        let slot: Int32
        if let target {
            _ = close(Int64(target))
            slot = target
        } else {
            guard let free = lowestFree(from: lowest) else { return nil }
            slot = free
        }
        entries[slot] = Entry(description: entry.description, closeOnExec: closeOnExec)
        return slot
    }

    mutating func setCloseOnExec(_ fd: Int64, _ value: Bool) {
        guard let entry = entry(fd) else { return }
        entries[Int32(fd)]?.closeOnExec = value
        _ = entry
    }

    /// Calls `body` with each open file description (once, however many descriptors share it).
    func forEachDescription(_ body: (OpenFile) -> Void) {
        for file in descriptions.values { body(file) }
    }

    /// Makes every description's offset shared by this table and its copies (before a `fork`
    /// copies the table: parent and child then move one offset, as on Linux).
    mutating func shareOffsets() {
        for id in descriptions.keys { descriptions[id]?.shareOffset() }
    }

    /// Gives every description an offset of its own again (what a snapshot or a reset holds).
    mutating func detachOffsets() {
        for id in descriptions.keys { descriptions[id]?.detachOffset() }
    }

    /// Closes every descriptor marked close-on-exec (an `execve`).
    mutating func closeOnExec() {
        for (fd, entry) in entries where entry.closeOnExec { _ = close(Int64(fd)) }
    }

    /// Closes every descriptor (the process ended).
    mutating func closeAll() {
        entries = [:]
        descriptions = [:]
    }

    /// Whether any open descriptor's description is of a kind `matches` accepts.
    func refersTo(_ matches: (OpenFile.Kind) -> Bool) -> Bool {
        entries.values.contains { entry in descriptions[entry.description].map { matches($0.kind) } ?? false }
    }

    /// Points the descriptions of in-memory file `path` at `newPath` (it was renamed away).
    mutating func renameMemoryFile(_ path: String, to newPath: String) {
        for (id, file) in descriptions {
            if case .memoryFile(path) = file.kind { descriptions[id]?.kind = .memoryFile(path: newPath) }
        }
    }

    /// Closes `fd`; its description goes when no descriptor refers to it. False: not open.
    mutating func close(_ fd: Int64) -> Bool {
        guard let entry = entry(fd) else { return false }
        entries[Int32(fd)] = nil
        if !entries.values.contains(where: { $0.description == entry.description }) {
            descriptions[entry.description] = nil
        }
        return true
    }

    private func lowestFree(from lowest: Int32) -> Int32? {
        var fd = max(0, lowest)
        while fd < Self.limit {
            if entries[fd] == nil { return fd }
            fd += 1
        }
        return nil
    }
}
