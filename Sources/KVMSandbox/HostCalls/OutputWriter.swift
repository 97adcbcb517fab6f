import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Writes guest output to a host file descriptor without letting the destination hurt the host:
///
/// - a closed pipe is `EPIPE` for the guest, never a `SIGPIPE` for the host process (the signal is
///   blocked on this thread during the write and a pending one it caused is consumed, so the
///   embedder's own SIGPIPE disposition is left alone);
/// - a full pipe cannot block past the run's deadline: the writer waits in `poll` slices of
///   `pollSlice` ms and writes at most `PIPE_BUF` bytes when the descriptor is a pipe, socket or
///   terminal (so a write after `POLLOUT` cannot block), and stops as soon as `interrupted()`
///   says the vCPU was kicked (a timeout, or a failure elsewhere).
enum OutputWriter {
    /// How the write ended.
    enum Result: Equatable {
        /// Everything was written.
        case complete
        /// `written` bytes went out before the run was interrupted.
        case interrupted(written: Int)
        /// The write failed with `errno` after `written` bytes.
        case failed(Errno, written: Int)
    }

    /// The longest a writer sleeps in `poll` before checking for an interruption.
    static let pollSlice: Int32 = 50

    /// Writes all of `bytes` to `fd`, unless interrupted or failed.
    static func write(_ bytes: UnsafeRawBufferPointer, to fd: Int32, interrupted: () -> Bool) -> Result {
        var status = stat()
        let kind = fstat(fd, &status) == 0 ? status.st_mode & S_IFMT : 0
        // Regular files and block devices never wait for a reader; everything else may.
        let mayBlock = kind != S_IFREG && kind != S_IFBLK
        let chunkLimit = mayBlock ? Int(PIPE_BUF) : bytes.count

        var blocked = sigset_t(), previous = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGPIPE)
        var pending = sigset_t()
        sigpending(&pending)
        let sigpipeWasPending = sigismember(&pending, SIGPIPE) == 1
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer {
            // Consume a SIGPIPE this write raised (it is pending on this thread or the process).
            if !sigpipeWasPending {
                var now = sigset_t()
                sigpending(&now)
                if sigismember(&now, SIGPIPE) == 1 {
                    var zero = timespec(tv_sec: 0, tv_nsec: 0)
                    _ = sigtimedwait(&blocked, nil, &zero)
                }
            }
            pthread_sigmask(SIG_SETMASK, &previous, nil)
        }

        var written = 0
        while written < bytes.count {
            if interrupted() { return .interrupted(written: written) }
            if mayBlock {
                var descriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let ready = poll(&descriptor, 1, pollSlice)
                if ready < 0 && errno != EINTR { return .failed(Errno.current, written: written) }
                if ready <= 0 { continue }
            }
            let count = min(chunkLimit, bytes.count - written)
            let n = Glibc.write(fd, bytes.baseAddress! + written, count)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return .failed(Errno.current, written: written)
            }
            written += n
        }
        return .complete
    }
}
