import CHost
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A host file or directory made visible to the guest (`kvmsandbox run --ro/--rw/--volume`).
/// Nothing else of the host's file system exists for the guest: other paths are `ENOENT`.
public struct FileGrant: Sendable, Equatable, Codable {
    /// The host path (a directory or a file).
    public var hostPath: String
    /// Where the guest sees it (an absolute path).
    public var guestPath: String
    /// Whether the guest may create, write, rename and delete beneath it.
    public var writable: Bool

    /// Grants `hostPath` at `guestPath` (default: the same path), read-only unless `writable`.
    public init(hostPath: String, guestPath: String? = nil, writable: Bool = false) {
        self.hostPath = hostPath
        self.guestPath = guestPath ?? hostPath
        self.writable = writable
    }
}

/// An open host directory (or a granted file's directory), closed on deinit.
///
/// (@unchecked: only an immutable descriptor number, used with `openat2` and friends, which the kernel serializes.)
final class HostDirectory: @unchecked Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}

/// The guest's view of the host file system: the grants, each with a directory fd opened once,
/// and path resolution that can never leave a grant. Guest paths are normalized lexically
/// (`.` and `..` resolved against the guest's cwd, never above `/`); what remains is opened with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the grant's directory, so symbolic
/// links and `..` inside the host tree cannot climb out either.
///
/// (@unchecked: immutable after creation; its directories are `HostDirectory`s, shared read-only by the forks of a snapshot.)
struct FileSystemView: @unchecked Sendable {
    struct Mount {
        /// Normalized guest path ("/data").
        let guestPath: String
        let directory: HostDirectory
        /// For a granted file: its name in `directory`; nil for a granted directory.
        let fileName: String?
        let writable: Bool
    }
    let mounts: [Mount]

    /// Opens every grant; throws a readable error for one that does not exist.
    init(grants: [FileGrant]) throws(SandboxError) {
        var mounts: [Mount] = []
        for grant in grants {
            guard grant.guestPath.hasPrefix("/") else {
                throw .invalidConfiguration("the guest path \(grant.guestPath) of a grant must be absolute")
            }
            var status = stat()
            guard stat(grant.hostPath, &status) == 0 else {
                throw .invalidConfiguration("cannot grant \(grant.hostPath): \(Errno.current)")
            }
            let isDirectory = status.st_mode & S_IFMT == S_IFDIR
            let directoryPath = isDirectory ? grant.hostPath : Self.parent(of: grant.hostPath)
            let fd = Glibc.open(directoryPath, 0o10000000 /* O_PATH */ | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw .invalidConfiguration("cannot open \(directoryPath): \(Errno.current)") }
            mounts.append(Mount(guestPath: Self.normalize(grant.guestPath, cwd: "/"), directory: HostDirectory(fd: fd),
                                fileName: isDirectory ? nil : Self.lastComponent(of: grant.hostPath), writable: grant.writable))
        }
        // Longest guest path first, so that the most specific grant wins.
        self.mounts = mounts.sorted { $0.guestPath.count > $1.guestPath.count }
    }

    /// Where a normalized guest path lands: a mount and the path relative to its directory.
    func locate(_ path: String) -> (mount: Mount, relative: String)? {
        for mount in mounts {
            if let name = mount.fileName {
                if path == mount.guestPath { return (mount, name) }
                continue
            }
            if path == mount.guestPath { return (mount, ".") }
            let prefix = mount.guestPath == "/" ? "/" : mount.guestPath + "/"
            if path.hasPrefix(prefix) { return (mount, String(path.dropFirst(prefix.count))) }
        }
        return nil
    }

    /// Whether a normalized guest path is a directory that leads to a grant (e.g. "/" or "/usr"
    /// when "/usr/lib" is granted): such paths exist for the guest as empty directories.
    func isAncestorOfAMount(_ path: String) -> Bool {
        let prefix = path == "/" ? "/" : path + "/"
        return mounts.contains { $0.guestPath.hasPrefix(prefix) }
    }

    /// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`.
    static let resolveFlags: UInt64 = 0x08 | 0x02
    /// `RESOLVE_NO_SYMLINKS`: every link is then followed by `followingFirstLink`, in the guest's namespace.
    static let resolveNoSymlinks: UInt64 = 0x04

    /// Opens a guest path as the host, beneath its grant. Returns the host fd or a Linux errno.
    ///
    /// A symbolic link whose target leaves its grant (an absolute one, `/lib64/ld-linux-x86-64.so.2
    /// -> /lib/x86_64-linux-gnu/...`, or `../..` above the grant) is followed in the *guest's*
    /// namespace: its target is read, made a guest path, and opened again through `locate`, so it
    /// reaches another grant or nothing, never the host's tree. At most 40 links, as Linux.
    func open(_ path: String, flags: Int32, mode: UInt32) -> Result<Int32, Errno> {
        openBeneath(path, flags: flags, mode: mode).map(\.fd)
    }

    /// `open`, also saying whether the grant the file was finally found in is writable.
    func openBeneath(_ path: String, flags: Int32, mode: UInt32) -> Result<(fd: Int32, writableGrant: Bool), Errno> {
        resolve(path, flags: flags, mode: mode, forChange: false).map { ($0.fd, $0.mount.writable) }
    }

    /// Where an open finally landed: the host fd, the grant it lies in, and its guest path
    /// after every symbolic link was followed.
    struct Resolved {
        let fd: Int32
        let mount: Mount
        let path: String
    }

    /// Opens a guest path beneath its grant, following symbolic links.
    ///
    /// Reads follow links inside a grant on the host (`RESOLVE_BENEATH` keeps them there). An
    /// open that may change anything (a write or create flag, or `forChange`: the directory of
    /// a name change) follows *every* link in the guest's namespace instead
    /// (`RESOLVE_NO_SYMLINKS`, then `followingFirstLink`), so the grant it lands in, the one
    /// whose writability is checked, is the grant the final file or directory lies in, never
    /// the one the guest's path started in (a link from a writable grant into a read-only one,
    /// or into a read-only grant nested in it).
    /// With `checkingWritable` false (locating a name change's directory) a read-only grant is
    /// not refused here: the caller decides, after the checks Linux makes first (EXDEV).
    func resolve(_ path: String, flags: Int32, mode: UInt32, forChange: Bool, checkingWritable: Bool = true) -> Result<Resolved, Errno> {
        let writes = forChange || flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) != 0
        let resolution = writes ? Self.resolveFlags | Self.resolveNoSymlinks : Self.resolveFlags
        // Guests never get special bits: no setuid, setgid or sticky file from a guest's create.
        let createMode = flags & O_CREAT != 0 ? UInt64(mode & 0o777) : 0
        var current = path
        for _ in 0..<Self.maximumLinks {
            guard let (mount, relative) = locate(current) else { return .failure(.noSuchFileOrDirectory) }
            if writes && checkingWritable && !mount.writable { return .failure(.readOnlyFileSystem) }
            // openat2 is strict: a mode without O_CREAT is EINVAL (open ignores it).
            let fd = chost_openat2(mount.directory.fd, relative, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), createMode, resolution)
            if fd >= 0 { return .success(Resolved(fd: fd, mount: mount, path: current)) }
            let error = Errno.current
            let followable = error == .improperLink || (writes && error == .tooManySymbolicLinkLevels)
            guard followable, let next = followingFirstLink(in: current, includingLast: flags & O_NOFOLLOW == 0) else {
                return .failure(Self.guestErrno(error))
            }
            current = next
        }
        return .failure(.tooManySymbolicLinkLevels)
    }

    /// The directory a name change happens in, resolved as `resolve(forChange:)` does, and the
    /// grant it lies in; the caller checks that grant's writability.
    func openDirectoryForChange(_ path: String) -> Result<Resolved, Errno> {
        resolve(path, flags: 0o10000000 /* O_PATH */ | O_DIRECTORY, mode: 0, forChange: true, checkingWritable: false)
    }

    /// Whether a normalized guest path is a grant's root or lies above one: such a name is a
    /// mount point (or holds one), which Linux does not let a rename or removal touch (EBUSY).
    func isMountPoint(_ path: String) -> Bool {
        let prefix = path == "/" ? "/" : path + "/"
        return mounts.contains { $0.guestPath == path || $0.guestPath.hasPrefix(prefix) }
    }

    /// Linux's limit on symbolic links followed in one lookup.
    static let maximumLinks = 40

    /// `path` with its first symbolic-link component replaced by the link's target (as a guest
    /// path), or nil when no component is a link. Each prefix is opened `O_PATH|O_NOFOLLOW`
    /// beneath its grant and the link read from that fd, so nothing outside a grant is looked at.
    func followingFirstLink(in path: String, includingLast: Bool) -> String? {
        let components = path.split(separator: "/").map(String.init)
        let count = includingLast ? components.count : components.count - 1
        guard count > 0 else { return nil }
        for index in 1...count {
            let prefix = "/" + components[0..<index].joined(separator: "/")
            // Above every grant the guest sees synthetic directories, never links.
            guard let (mount, relative) = locate(prefix) else { continue }
            let fd = chost_openat2(mount.directory.fd, relative, UInt64(0o10000000 | O_NOFOLLOW | O_CLOEXEC), 0, Self.resolveFlags)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var status = stat()
            guard fstat(fd, &status) == 0 else { return nil }
            guard status.st_mode & S_IFMT == S_IFLNK else { continue }
            var buffer = [CChar](repeating: 0, count: 4097)
            let length = readlinkat(fd, "", &buffer, 4096)
            guard length > 0 else { return nil }
            let target = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let rest = components[index...].joined(separator: "/")
            let joined = target.hasPrefix("/") ? target : Self.parent(of: prefix) + "/" + target
            return Self.normalize(rest.isEmpty ? joined : joined + "/" + rest, cwd: "/")
        }
        return nil
    }

    /// Escapes (`EXDEV`: a symlink or `..` that would leave the grant) look like absent files.
    static func guestErrno(_ error: Errno) -> Errno {
        error == .improperLink ? .noSuchFileOrDirectory : error
    }

    /// `path` made absolute against `cwd`, with `.`, `..` and repeated slashes resolved lexically;
    /// `..` at the root stays at the root.
    static func normalize(_ path: String, cwd: String) -> String {
        var components: [Substring] = []
        let full = path.hasPrefix("/") ? path : cwd + "/" + path
        for component in full.split(separator: "/", omittingEmptySubsequences: true) {
            switch component {
            case ".": continue
            case "..": if !components.isEmpty { components.removeLast() }
            default: components.append(component)
            }
        }
        return "/" + components.joined(separator: "/")
    }

    static func parent(of path: String) -> String {
        let trimmed = path.hasSuffix("/") ? String(path.dropLast()) : path
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
    }

    static func lastComponent(of path: String) -> String {
        String(path.split(separator: "/").last ?? Substring(path))
    }
}
