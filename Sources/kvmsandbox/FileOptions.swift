import ArgumentParser
import Foundation
import KVMSandbox

/// The file options `run` and `serve` share: grants and in-memory directories.
struct FileOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("ro"), help: "Make a host file or directory visible to the guest at the same path, read-only (repeatable).")
    var readOnly: [String] = []

    @Option(name: .customLong("rw"), help: "Make a host file or directory visible at the same path, writable (repeatable).")
    var readWrite: [String] = []

    @Option(name: .long, help: "HOST:GUEST[:ro|rw]: make a host path visible at another guest path (repeatable; default ro).")
    var volume: [String] = []

    @Option(name: .long, help: "A writable in-memory directory for the guest (repeatable; part of the VM's state). /tmp and /dev/shm are ones by default.")
    var tmpfs: [String] = []

    @Flag(name: .customLong("no-default-tmpfs"), help: "No in-memory /tmp and /dev/shm by default (only --tmpfs ones).")
    var noDefaultTmpfs = false

    /// The in-memory directories: --tmpfs, plus /tmp and /dev/shm unless --no-default-tmpfs or a
    /// grant is mounted exactly there (grants inside them show through: mounts nest by depth).
    func memoryDirectories(grants: [FileGrant]) -> [String] {
        guard !noDefaultTmpfs else { return tmpfs }
        let granted = Set(grants.map { FileManagerPath.normalize($0.guestPath) })
        let requested = Set(tmpfs.map { FileManagerPath.normalize($0) })
        return tmpfs + ["/tmp", "/dev/shm"].filter { !granted.contains($0) && !requested.contains($0) }
    }

    /// The grants from --ro, --rw and --volume; relative host paths are made absolute.
    func grants() throws -> [FileGrant] {
        try labelledGrants().map(\.grant)
    }

    /// Whether any of --ro, --rw or --volume was given.
    var givesGrants: Bool { !readOnly.isEmpty || !readWrite.isEmpty || !volume.isEmpty }

    /// Each grant with the option that made it ("--ro data"), for errors that name the flag.
    func labelledGrants() throws -> [(option: String, grant: FileGrant)] {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        }
        var grants = readOnly.map { ("--ro \($0)", FileGrant(hostPath: absolute($0))) }
            + readWrite.map { ("--rw \($0)", FileGrant(hostPath: absolute($0), writable: true)) }
        for spec in volume {
            let parts = spec.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2 || parts.count == 3, !parts[0].isEmpty, parts[1].hasPrefix("/"),
                  parts.count == 2 || parts[2] == "ro" || parts[2] == "rw" else {
                throw ValidationError("--volume takes HOST:GUEST[:ro|rw] with an absolute GUEST path, not \(spec)")
            }
            grants.append(("--volume \(spec)", FileGrant(hostPath: absolute(parts[0]), guestPath: parts[1], writable: parts.count == 3 && parts[2] == "rw")))
        }
        return grants
    }
}
