#if canImport(Glibc)
import Glibc
#endif

/// Which Linux system calls the host's polling thread may serve while the guest spins in the
/// exitless `syscall` stub (`SandboxConfiguration.systemCallTransport`), and serving them.
///
/// Served there: calls that only read or write guest memory and the Linux layer's own state,
/// and cannot block: reads and writes of files, in-memory files, devices, captured output, and
/// of pipes and eventfds (a call that would have to wait is undone and goes by exit); stat,
/// access, readlink, getcwd, getdents64, open, close, dup, fcntl, lseek, ioctl; the process's
/// identity and limits; clocks; getrandom; uname; rt_sigaction; a futex wake; in socket mode
/// `accept` of a pending connection and reads and writes of connections that will not wait;
/// anonymous `mmap`, `munmap`, `brk` and `madvise` of up to `exitlessMappingLimit` bytes (any
/// reservation)
/// (they add mappings, which needs no cached translation dropped; should one take a permission
/// away, the poller drops its translations itself before answering). Everything else answers
/// nil and is served on the vCPU thread by exit: calls that change the vCPU or take access
/// away on purpose (mprotect, file mmap, mremap, arch_prctl, clone, rt_sigreturn, exit), that
/// may block (a read of standard input, sockets, futex wait, poll, nanosleep), signals, and
/// stdout or stderr going to a host descriptor (a slow reader must not hold the poller that
/// serves every VM).
extension LinuxPersonality {
    /// The most bytes an exitless `mmap`, `brk` or `madvise` may cover: the poller writes the
    /// page tables of (or zeroes) every page itself, and a call that outlasts the guest's spin
    /// (~50 us) costs the fallback exit anyway, and counts towards suspending posts. (A
    /// reservation, `PROT_NONE` without `MAP_FIXED`, maps nothing: any size. A file's mapping
    /// copies the file: it stays on the exit path for the same reason.)
    static let exitlessMappingLimit: UInt64 = 2 << 20

    /// A poller-served call took access away from pages and their cached translations could not
    /// be dropped from the polling thread: the run must not go on (`ExitlessServer` ends it).
    struct StaleTranslations: Error, CustomStringConvertible {
        let pages: Int
        var description: String { "could not drop the cached translations of \(pages) page(s) from the polling thread" }
    }

    /// Serves `call` on the polling thread when it qualifies: its result, or nil when the vCPU
    /// thread must serve it by exit (nothing has happened then). Throws `StaleTranslations` when
    /// a call took access away and KVM could not be made to forget the old translations.
    func serveExitless(_ call: HostCall) throws(StaleTranslations) -> Int64? {
        guard let entry = Self.systemCalls[call.number], mayServeExitless(call, entry) else { return nil }
        let served: Result<HostCallEffect, any Error>
        // Nothing may wait on the polling thread (it serves every VM: the process that would end
        // the wait could not be served): a call that would wait is undone below.
        servingExitless = true
        do { served = .success(try handle(call)) } catch { served = .failure(error) }
        servingExitless = false
        // Pages that lost a permission (anonymous memory reused over an executable mapping, a
        // MAP_FIXED over one), even by a call that then failed: their translations go before
        // the guest hears of the call. KVM's MMU notifier makes this safe while the vCPU runs.
        let reduced = space.takeReducedPages()
        if !reduced.isEmpty, !space.memory.invalidateTranslations(ofPages: reduced) {
            throw StaleTranslations(pages: reduced.count)
        }
        let effect: HostCallEffect
        switch served {
        case .success(let value): effect = value
        case .failure(let error): return HostCallErrno.result(for: error) ?? -Int64(HostCallErrno.EIO)
        }
        switch effect {
        case .value(let value):
            exitlessCounts[call.number, default: 0] += 1
            return value
        case .thread(.block):
            // It would wait (an empty pipe, a zero eventfd): undone; the exit path waits instead.
            cancelWait()
            counts[call.number, default: 0] -= 1
            return nil
        default:
            // Not reachable for the calls above; the exit path would do the same again.
            counts[call.number, default: 0] -= 1
            return nil
        }
    }

    /// Whether `call` needs nothing of the vCPU thread with these arguments (`entry.exitless`).
    func mayServeExitless(_ call: HostCall, _ entry: LinuxSystemCall) -> Bool {
        switch entry.exitless {
        case .never: return false
        case .always: return true
        case .whenTransferCannotWait:
            guard let file = state.files[call.descriptor(0)] else { return true }  // EBADF either way
            switch file.kind {
            case .standardInput, .socket: return false
            case .output(let stream): return !builtins.outputMayBlock(stream: stream)
            case .connection(let host):
                // Only when it cannot wait: data to read, room to write (checked on the host).
                let outgoing = entry.transfer?.isOutgoing ?? false
                var descriptor = pollfd(fd: host.fd, events: Int16(outgoing ? POLLOUT : POLLIN), revents: 0)
                return Glibc.poll(&descriptor, 1, 0) > 0
            default: return true
            }
        case .whenConnectionPending:
            // A connection to hand over; with none, `accept` may wait (socket mode's ready point).
            return !state.pendingConnections.isEmpty
        case .whenFutexWakes:
            let operation = call[1] & 0x7f  // without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
            return operation == 1 || operation == 10  // FUTEX_WAKE, FUTEX_WAKE_BITSET
        case .whenSmallAnonymousMapping:
            // Anonymous memory, not executable (a JIT's mapping goes through mprotect).
            let reservation = call[2] == 0 && call[3] & (0x10 | 0x100000) == 0
            return call[3] & 0x20 != 0 && call[3] & 0x03 == 0x02 && call[2] & 4 == 0 && (call[1] <= Self.exitlessMappingLimit || reservation)
        case .whenSmallRange:
            return call[1] <= Self.exitlessMappingLimit
        case .whenSmallHeapGrowth:
            let mapped = builtins.state.heapMappedEnd
            return call[0] <= mapped || call[0] - mapped <= Self.exitlessMappingLimit
        }
    }
}
