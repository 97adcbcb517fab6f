#if canImport(Glibc)
import Glibc
#endif

/// Narrowing a snapshot's policy: whoever serves a snapshot file may give its VMs less than the
/// file grants (fewer files, read-only instead of read-write, fewer destinations), never more.
extension Snapshot {
    /// Why `grant` would widen this snapshot's policy, or nil when it narrows it: it must show a
    /// part of one of the snapshot's grants at the same place (the same guest path and host path
    /// below that grant's, with no link on the host between them), and be writable only where
    /// that grant is.
    public func policyRefusal(for grant: FileGrant) -> String? {
        let guest = FileSystemView.normalize(grant.guestPath, cwd: "/")
        guard let real = Self.realPath(grant.hostPath) else { return "\(grant.hostPath) does not exist" }
        for granted in configuration.files {
            let grantedGuest = FileSystemView.normalize(granted.guestPath, cwd: "/")
            let suffix: String
            if guest == grantedGuest {
                suffix = ""
            } else if guest.hasPrefix(grantedGuest == "/" ? "/" : grantedGuest + "/") {
                suffix = String(guest.dropFirst(grantedGuest == "/" ? 0 : grantedGuest.count))
            } else {
                continue
            }
            guard let grantedReal = Self.realPath(granted.hostPath), real == (suffix.isEmpty ? grantedReal : grantedReal + suffix)
                  || (grantedReal == "/" && real == suffix) else { continue }
            if grant.writable && !granted.writable { return "\(grant.guestPath) is read-only in the snapshot" }
            return nil
        }
        return "the snapshot grants nothing that holds \(grant.hostPath) at \(grant.guestPath)"
    }

    /// This snapshot with a narrower policy: `files` in place of its grants (nil: unchanged)
    /// and `allowedConnections` in place of its destinations (nil: unchanged). Throws, naming
    /// the first, for a grant or destination the snapshot does not have. Shares the memory.
    public func narrowed(files: [FileGrant]? = nil, allowedConnections: [String]? = nil) throws(SnapshotPolicyError) -> Snapshot {
        var configuration = configuration
        if let files {
            for grant in files {
                if let reason = policyRefusal(for: grant) { throw .widens(grant.hostPath, reason) }
            }
            configuration.files = files
        }
        if let allowedConnections {
            for destination in allowedConnections where !self.configuration.allowedConnections.contains(destination) {
                throw .widens(destination, "the snapshot may not connect there")
            }
            configuration.allowedConnections = allowedConnections
        }
        let view: FileSystemView
        do {
            view = try Sandbox.fileSystem(for: configuration, interpreter: image.interpreter?.path, hostPath: hostProgramPath)
        } catch {
            throw .widens(files?.first?.hostPath ?? "", "\(error)")
        }
        return Snapshot(configuration: configuration, image: image, usedBytes: usedBytes, system: system, memory: memory,
                        vcpuState: vcpuState, tablesRoot: tablesRoot, allocator: allocator, builtins: builtins, linux: linux,
                        fileSystem: view, stackBottom: stackBottom, hostProgramPath: hostProgramPath)
    }

    /// A one-line account of what the snapshot's VMs may do: memory, files, in-memory
    /// directories, outgoing connections and the environment's size (never its values).
    public var policySummary: String {
        let files = configuration.files.map { "\($0.guestPath)\($0.guestPath == $0.hostPath ? "" : " (\($0.hostPath))") \($0.writable ? "rw" : "ro")" }
        let libraries = configuration.systemView ? " + the system view ro"
            : configuration.systemLibraries && image.interpreter != nil ? " + system libraries ro" : ""
        return "memory \(configuration.memorySize >> 20) MiB; files: \(files.isEmpty ? "none" : files.joined(separator: ", "))\(libraries); "
            + "tmpfs: \(configuration.memoryDirectories.isEmpty ? "none" : configuration.memoryDirectories.joined(separator: ", ")); "
            + "connect: \(configuration.allowedConnections.isEmpty ? "none" : configuration.allowedConnections.joined(separator: ", ")); "
            + "environment: \(configuration.environment.count) variable(s)"
    }

    /// `realpath(3)` of a host path, or nil.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// Why a snapshot's policy could not be narrowed as asked.
public enum SnapshotPolicyError: Error, Equatable, CustomStringConvertible {
    /// The grant or destination (first value) would widen the policy, for the reason given.
    case widens(String, String)

    /// A one-line, human-readable account of it (what the CLI prints).
    public var description: String {
        switch self {
        case .widens(let what, let why): return "\(what) widens the snapshot's policy: \(why)"
        }
    }
}
