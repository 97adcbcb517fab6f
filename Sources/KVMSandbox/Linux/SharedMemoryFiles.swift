import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A writable in-memory directory tree (`kvmsandbox run --tmpfs /tmp`): part of the VM's state,
/// so a snapshot holds it and a reset puts it back. A handle on a `MemoryFileTree` that every
/// process forked from this one, and every program it execs, shares (as processes share a tmpfs
/// mount: what `cc1` writes to /tmp, `as` reads), behind a lock since processes run on their own
/// host threads. A snapshot, a fork of one and a reset take a `detached()` copy, so separate
/// VMs never share a tree.
struct MemoryFileSystem: Codable, Sendable {
    typealias Node = MemoryFileTree.Node

    /// The shared tree. Kept alive by every handle that refers to it.
    private final class Storage: Sendable {
        let tree: HostMutex<MemoryFileTree>
        /// The shared-memory objects of files mapped `MAP_SHARED`, by path: every process that
        /// maps the file maps the same object. Forgotten when the path is removed, renamed,
        /// replaced or truncated (a new file by that name is new memory).
        let mapped = HostMutex<[String: SharedMemoryObject]>([:])
        /// The AF_UNIX socket names bound in the sandbox (they have no file in the tree).
        let sockets = UnixSocketNames()
        init(_ tree: MemoryFileTree) { self.tree = HostMutex(tree) }
    }
    private let storage: Storage

    static var maximumNodes: Int { MemoryFileTree.maximumNodes }
    static var entryOverhead: Int { MemoryFileTree.entryOverhead }

    /// The bytes an entry named `path` is charged.
    static func charge(_ path: String) -> Int { MemoryFileTree.charge(path) }

    init(mounts: [String], capacity: Int) { storage = Storage(MemoryFileTree(mounts: mounts, capacity: capacity)) }

    /// An in-memory tree that lets the grants at `grants` (guest paths) show through where they
    /// lie inside it.
    init(mounts: [String], capacity: Int, grants: [String]) {
        storage = Storage(MemoryFileTree(mounts: mounts, capacity: capacity, grants: grants))
    }

    init(from decoder: any Decoder) throws { storage = Storage(try MemoryFileTree(from: decoder)) }

    func encode(to encoder: any Encoder) throws { try read { $0 }.encode(to: encoder) }

    /// A tree of its own with the same contents (what a snapshot or a reset installs).
    func detached() -> MemoryFileSystem { MemoryFileSystem(storage: Storage(read { $0 })) }

    private init(storage: Storage) { self.storage = storage }

    private func read<T>(_ body: (MemoryFileTree) -> T) -> T { storage.tree.withLock { body($0) } }
    private func change<T>(_ body: (inout MemoryFileTree) -> T) -> T { storage.tree.withLock { body(&$0) } }

    /// Normalized absolute paths of the mount points.
    var mounts: [String] { read(\.mounts) }
    var capacity: Int { read(\.capacity) }
    var used: Int { read(\.used) }
    /// How many entries the tree has (mount points and pinned directories included).
    var nodeCount: Int { read(\.nodes.count) }
    var isConsistent: Bool { read(\.isConsistent) }

    func deepestMount(covering path: String) -> String? { read { $0.deepestMount(covering: path) } }
    func covers(_ path: String) -> Bool { read { $0.covers(path) } }
    func node(_ path: String) -> Node? { read { $0.node(path) } }
    func contents(_ path: String) -> [UInt8]? { read { $0.contents(path) } }
    func children(_ path: String) -> [String] { read { $0.children(path) } }
    func status(_ path: String) -> stat? { read { $0.status(path) } }

    func createFile(_ path: String, exclusive: Bool, truncate: Bool) -> Errno? {
        if truncate { forgetMapping(path) }
        return change { $0.createFile(path, exclusive: exclusive, truncate: truncate) }
    }
    func write(_ path: String, _ bytes: [UInt8], at offset: UInt64) -> Result<Int, Errno> { change { $0.write(path, bytes, at: offset) } }
    func resize(_ path: String, to length: Int64) -> Errno? { change { $0.resize(path, to: length) } }
    func makeDirectory(_ path: String) -> Errno? { change { $0.makeDirectory(path) } }
    func remove(_ path: String, directory: Bool) -> Errno? {
        if let error = change({ $0.remove(path, directory: directory) }) { return error }
        forgetMapping(path)
        return nil
    }
    func rename(_ source: String, to target: String) -> Errno? {
        if let error = change({ $0.rename(source, to: target) }) { return error }
        storage.mapped.withLock { mapped in
            let moved = mapped.removeValue(forKey: source)
            mapped[target] = moved
        }
        return nil
    }

    /// A second name for file `source` (a copy of its bytes; a mapping of either name maps the
    /// same shared memory).
    func link(_ source: String, to target: String) -> Errno? {
        if let error = change({ $0.link(source, to: target) }) { return error }
        storage.mapped.withLock { mapped in if let object = mapped[source] { mapped[target] = object } }
        return nil
    }

    /// The shared-memory object of file `path` for a `MAP_SHARED` mapping reaching `end` bytes
    /// into it: the one other mappings of the file use, or a new one holding the file's bytes.
    /// Nil when `path` is not a file or the host has no memory for it.
    func sharedObject(_ path: String, covering end: UInt64) -> SharedMemoryObject? {
        guard let contents = contents(path) else { return nil }
        return storage.mapped.withLock { mapped -> SharedMemoryObject? in
            if let object = mapped[path] { return object.ensureSize(end) ? object : nil }
            guard let size = PageSize.alignUp(max(end, UInt64(contents.count))),
                  let object = try? SharedMemoryObject(size: size), object.write(contents, at: 0) else { return nil }
            mapped[path] = object
            return object
        }
    }

    /// The AF_UNIX names of every process sharing this tree (the sandbox's processes and the
    /// programs they exec; a snapshot's copy starts with none).
    var socketNames: UnixSocketNames { storage.sockets }

    private func forgetMapping(_ path: String) { storage.mapped.withLock { _ = $0.removeValue(forKey: path) } }
}
