import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The tree behind `MemoryFileSystem`: a value; bounded by `capacity` bytes of file
/// contents *and names* (each entry costs its path's bytes plus `entryOverhead`: 20,000 files
/// with 4 KiB paths once took 106 MiB of host memory uncounted), `ENOSPC` past it, and by
/// `maximumNodes` entries.
struct MemoryFileTree: Codable, Sendable {
    enum Node: Codable, Sendable {
        case directory
        case file([UInt8])
    }
    /// Normalized absolute paths of the mount points.
    let mounts: [String]
    /// Grants mounted inside an in-memory tree (`--tmpfs /tmp --ro /tmp/data`): mounts nest by
    /// depth, as Docker's do, so the grant shows through. Their paths and the directories on
    /// the way to them are pinned nodes: free, and never removed or renamed (EBUSY).
    private(set) var nestedGrants: [String] = []
    private(set) var pinned: Set<String> = []
    private(set) var nodes: [String: Node] = [:]
    private(set) var used = 0
    let capacity: Int
    static let maximumNodes = 65_536
    /// What an entry costs besides its path's bytes (the dictionary slot, the node).
    static let entryOverhead = 64

    /// The bytes an entry named `path` is charged.
    static func charge(_ path: String) -> Int { path.utf8.count + entryOverhead }

    init(mounts: [String], capacity: Int) {
        self.mounts = mounts.map { FileSystemView.normalize($0, cwd: "/") }
        self.capacity = capacity
        for mount in self.mounts { nodes[mount] = .directory }  // the mount points themselves are free
    }

    /// An in-memory tree that lets the grants at `grants` (guest paths) show through where they
    /// lie inside it.
    init(mounts: [String], capacity: Int, grants: [String]) {
        self.init(mounts: mounts, capacity: capacity)
        for grant in grants.map({ FileSystemView.normalize($0, cwd: "/") }) {
            guard let mount = deepestMount(covering: grant), mount != grant else { continue }
            nestedGrants.append(grant)
            var path = grant
            while path != mount && path != "/" {
                if nodes[path] == nil { nodes[path] = .directory }
                pinned.insert(path)
                path = FileSystemView.parent(of: path)
            }
        }
    }

    /// The deepest in-memory mount `path` lies in, if any.
    func deepestMount(covering path: String) -> String? {
        mounts.filter { path == $0 || path.hasPrefix($0 == "/" ? "/" : $0 + "/") }.max { $0.count < $1.count }
    }

    /// Whether the accounting holds (a tree read from a snapshot file): bytes used within the
    /// capacity and equal to the files' sizes, the node count within its limit.
    var isConsistent: Bool {
        guard capacity >= 0, capacity <= 1 << 40, used >= 0, used <= capacity, nodes.count <= Self.maximumNodes else { return false }
        var total = 0
        for (path, node) in nodes {
            if !mounts.contains(path) && !pinned.contains(path) { total += Self.charge(path) }
            if case .file(let bytes) = node { total += bytes.count }
        }
        return total == used
    }

    /// Whether `path` (normalized) lies in one of the in-memory trees, and not in a grant
    /// mounted deeper inside it.
    func covers(_ path: String) -> Bool {
        guard let mount = deepestMount(covering: path) else { return false }
        return !nestedGrants.contains { grant in
            grant.count > mount.count && (path == grant || path.hasPrefix(grant + "/"))
        }
    }

    func node(_ path: String) -> Node? { nodes[path] }

    /// The file's contents, or nil when it is not a file.
    func contents(_ path: String) -> [UInt8]? {
        if case .file(let bytes) = nodes[path] { return bytes }
        return nil
    }

    private func parentIsDirectory(_ path: String) -> Errno? {
        switch nodes[FileSystemView.parent(of: path)] {
        case .directory: return nil
        case .file: return .notDirectory
        case nil: return .noSuchFileOrDirectory
        }
    }

    /// Creates an empty file (or truncates one with `truncate`).
    mutating func createFile(_ path: String, exclusive: Bool, truncate: Bool) -> Errno? {
        switch nodes[path] {
        case .directory: return .isDirectory
        case .file(let bytes):
            if exclusive { return .fileExists }
            if truncate { used -= bytes.count; nodes[path] = .file([]) }
            return nil
        case nil:
            if let error = parentIsDirectory(path) { return error }
            guard nodes.count < Self.maximumNodes, used + Self.charge(path) <= capacity else { return .noSpace }
            nodes[path] = .file([])
            used += Self.charge(path)
            return nil
        }
    }

    /// A second name for file `source`: a copy of its bytes made now (this tree has no inodes;
    /// what `sem_open`'s link-then-unlink and link-based lock files need). Directories: `EPERM`.
    mutating func link(_ source: String, to target: String) -> Errno? {
        guard let node = nodes[source] else { return .noSuchFileOrDirectory }
        guard case .file(let bytes) = node else { return .notPermitted }
        guard nodes[target] == nil else { return .fileExists }
        if let error = parentIsDirectory(target) { return error }
        guard nodes.count < Self.maximumNodes, used + Self.charge(target) + bytes.count <= capacity else { return .noSpace }
        nodes[target] = node
        used += Self.charge(target) + bytes.count
        return nil
    }

    /// Writes `bytes` at `offset` (zero-filling a gap); returns the count or an errno.
    mutating func write(_ path: String, _ bytes: [UInt8], at offset: UInt64) -> Result<Int, Errno> {
        guard case .file(var contents) = nodes[path] else { return .failure(.noSuchFileOrDirectory) }
        guard offset <= UInt64(capacity) else { return .failure(.fileTooLarge) }
        let start = Int(offset), end = start + bytes.count
        let growth = max(0, end - contents.count)
        guard used + growth <= capacity else { return .failure(.noSpace) }
        if end > contents.count { contents += [UInt8](repeating: 0, count: end - contents.count) }
        contents.replaceSubrange(start..<end, with: bytes)
        used += growth
        nodes[path] = .file(contents)
        return .success(bytes.count)
    }

    /// Sets a file's size (`truncate`): cut, or extended with zeros within the capacity.
    mutating func resize(_ path: String, to length: Int64) -> Errno? {
        switch nodes[path] {
        case nil: return .noSuchFileOrDirectory
        case .directory: return .isDirectory
        case .file(var contents):
            guard length >= 0, length <= Int64(capacity) else { return .fileTooLarge }
            let growth = Int(length) - contents.count
            guard used + growth <= capacity else { return .noSpace }
            if growth > 0 { contents += [UInt8](repeating: 0, count: growth) } else { contents.removeLast(-growth) }
            used += growth
            nodes[path] = .file(contents)
            return nil
        }
    }

    mutating func makeDirectory(_ path: String) -> Errno? {
        if nodes[path] != nil { return .fileExists }
        if let error = parentIsDirectory(path) { return error }
        guard nodes.count < Self.maximumNodes, used + Self.charge(path) <= capacity else { return .noSpace }
        nodes[path] = .directory
        used += Self.charge(path)
        return nil
    }

    mutating func remove(_ path: String, directory: Bool) -> Errno? {
        guard let node = nodes[path] else { return .noSuchFileOrDirectory }
        if mounts.contains(path) || pinned.contains(path) { return .resourceBusy }
        switch node {
        case .directory:
            guard directory else { return .isDirectory }
            if !children(path).isEmpty { return .directoryNotEmpty }
        case .file(let bytes):
            guard !directory else { return .notDirectory }
            used -= bytes.count
        }
        nodes[path] = nil
        used -= Self.charge(path)
        return nil
    }

    mutating func rename(_ source: String, to target: String) -> Errno? {
        guard let node = nodes[source] else { return .noSuchFileOrDirectory }
        if mounts.contains(source) || mounts.contains(target) || pinned.contains(source) || pinned.contains(target) { return .resourceBusy }
        if source == target { return nil }
        if target.hasPrefix(source + "/") { return .invalidArgument }
        if let error = parentIsDirectory(target) { return error }
        if case .directory = nodes[target], !children(target).isEmpty { return .directoryNotEmpty }
        if case .directory = node, case .file = nodes[target] { return .notDirectory }
        if case .file = node, case .directory = nodes[target] { return .isDirectory }
        // Move the node and everything beneath it; longer names cost more (checked first).
        let moved = nodes.filter { $0.key == source || $0.key.hasPrefix(source + "/") }
        let growth = (target.utf8.count - source.utf8.count) * moved.count
        var replaced = 0
        if let old = nodes[target] {
            replaced = Self.charge(target)
            if case .file(let bytes) = old { replaced += bytes.count }
        }
        guard used + growth - replaced <= capacity else { return .noSpace }
        used += growth - replaced
        nodes[target] = nil
        for (path, _) in moved { nodes[path] = nil }
        for (path, value) in moved { nodes[target + path.dropFirst(source.count)] = value }
        return nil
    }

    /// The names directly inside directory `path`.
    func children(_ path: String) -> [String] {
        let prefix = path == "/" ? "/" : path + "/"
        // Names with a NUL are unlinked files still open (`LinuxPersonality.keepOpenMemoryFile`).
        return nodes.keys.filter { $0.hasPrefix(prefix) && $0 != path && !$0.dropFirst(prefix.count).contains("/") && !$0.contains("\u{0}") }
            .map { String($0.dropFirst(prefix.count)) }.sorted()
    }

    /// A `struct stat` for `path`.
    func status(_ path: String) -> stat? {
        var status = stat()
        switch nodes[path] {
        case .directory: status.st_mode = S_IFDIR | 0o777; status.st_nlink = 2
        case .file(let bytes): status.st_mode = S_IFREG | 0o666; status.st_size = bytes.count; status.st_nlink = 1
        case nil: return nil
        }
        status.st_ino = LinuxPersonality.stableInode(path)
        status.st_dev = 0x2a  // tmpfs's anonymous device
        status.st_blksize = 4096
        status.st_blocks = (status.st_size + 511) / 512
        return status
    }
}
