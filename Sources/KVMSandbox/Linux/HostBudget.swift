import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The host memory the Linux layer holds for one guest, against its budget
/// (`SandboxConfiguration.hostMemoryLimit`). Every record the guest can make the host keep is
/// counted here; a call that would add to them fails, once the budget is spent, with the errno
/// Linux gives when short of memory. Each such call adds at most one bounded record (a 64 KiB
/// pipe buffer, one mapping record), so the host never holds more than the budget plus that.
extension LinuxPersonality {
    /// Bytes charged per record kind (the record, its dictionary or array slot).
    enum Charge {
        static let description = 128, epollSet = 256, epollInterest = 64, eventCounter = 64
        static let socket = 256, mapping = 64, range = 32, thread = 4096
    }

    /// What the host holds for the guest now, in bytes (captured output aside: `outputLimit`).
    var hostBytesInUse: Int {
        var total = state.memoryFiles.used
        total += state.pipes.count * Self.pipeCapacity  // reserved whole at pipe()
        total += state.epolls.count * Charge.epollSet + state.epolls.values.reduce(0) { $0 + $1.count * Charge.epollInterest }
        total += state.eventCounters.count * Charge.eventCounter
        total += (state.sockets.count + state.pendingConnections.count) * Charge.socket
        total += state.fileMappings.reduce(0) { $0 + Charge.mapping + $1.path.utf8.count }
        total += (builtins.state.placed.count + builtins.state.freeRanges.count) * Charge.range
        total += state.threads.count * Charge.thread
        total += state.files.descriptions.count * Charge.description
        return total
    }

    /// The disk quota's bytes still free (nil: no quota).
    var diskAllowance: Int? { diskQuota.map { max(0, $0 - diskBytesAdded) } }

    /// Adds `bytes` (negative: gives back) to what the guest added to the host's disk; never
    /// below zero (removing files that were there before gives no extra room).
    func chargeDisk(_ bytes: Int) {
        guard diskQuota != nil else { return }
        diskBytesAdded = max(0, diskBytesAdded + bytes)
    }

    /// Bytes a disk-quota charge counts for a new file or directory (its inode and entry).
    static let diskEntryCharge = 4096

    /// What removing `name` in `directory` gives back to the quota: a regular file's blocks
    /// and entry when this is its last link, a directory's entry.
    func diskRefund(removing name: String, in directory: Int32) -> Int {
        guard diskQuota != nil else { return 0 }
        var status = stat()
        guard fstatat(directory, name, &status, 0x100 /* AT_SYMLINK_NOFOLLOW */) == 0 else { return 0 }
        switch status.st_mode & S_IFMT {
        case S_IFDIR: return Self.diskEntryCharge
        case S_IFREG where status.st_nlink == 1: return Int(status.st_blocks) * 512 + Self.diskEntryCharge
        default: return 0
        }
    }

    /// For a call that would make the host hold more: its failure once the budget is spent,
    /// or nil to go ahead.
    func refusalForHostBudget(_ call: HostCall, cost: LinuxSystemCall.HostCost) -> HostCallEffect? {
        let errno: Errno
        switch cost {
        case .none: return nil
        case .hostObject: errno = .noMemory
        case .hostObjectWhenArgument1(let value):
            guard call[1] == value else { return nil }
            errno = .noMemory
        case .thread: errno = .resourceTemporarilyUnavailable
        }
        return hostBytesInUse < hostMemoryLimit ? nil : Self.fail(errno)
    }
}
