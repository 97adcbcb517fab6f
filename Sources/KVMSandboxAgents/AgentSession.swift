import Dispatch
import KVMSandbox
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One agent session: a fork of the warm driver snapshot, kept (not reset) from one cell to the
/// next so its variables, imports and files persist. Requests run one at a time on the
/// session's own thread (a serial dispatch queue), never on Swift's cooperative pool.
final class AgentSession: @unchecked Sendable {
    // @unchecked: `vm` and `needsRestart` are touched only by jobs on `queue`, one at a time;
    // the rest is immutable or behind `activity`.

    private let queue = DispatchQueue(label: "kvmsandbox.session")
    private let vm: Sandbox
    /// Set when a request ended the interpreter (a timeout, an exit, an unreadable answer):
    /// the next one starts from the snapshot again.
    private var needsRestart = false
    private let activity: Mutex<Activity>

    /// When the session was last used and how much it has done.
    struct Activity: Sendable {
        var lastUsed = ContinuousClock.now
        var requests = 0
        var running = false
    }

    /// Forks `snapshot` for a new session.
    init(snapshot: Snapshot) throws {
        vm = try snapshot.fork()
        activity = Mutex(Activity())
    }

    /// Runs one empty turn, so that the pages a turn touches are mapped (and on PVM shadowed)
    /// before an agent's first cell: a spare session answers its first cell as fast as a warm one.
    /// True when the session is sound afterwards.
    func warmUp(timeout: Double) async -> Bool {
        _ = await perform(.run("print(end='')"), timeout: timeout, outputLimit: 256)
        let reply = await perform(.run("print(end='')"), timeout: timeout, outputLimit: 256)
        activity.withLock {
            $0.requests = 0
            $0.lastUsed = .now
        }
        return reply.error == nil
    }

    /// What the session has done so far.
    var currentActivity: Activity { activity.withLock { $0 } }

    /// Stops the request running now, if any (closing a session, shutting down).
    func interrupt() { vm.interruptHandle.interrupt() }

    /// Runs `request` in the session's interpreter, at most `timeout` seconds.
    func perform(_ request: SessionRequest, timeout: Double, outputLimit: Int) async -> SessionReply {
        activity.withLock {
            $0.lastUsed = .now
            $0.running = true
        }
        defer {
            activity.withLock {
                $0.lastUsed = .now
                $0.requests += 1
                $0.running = false
            }
        }
        return await withCheckedContinuation { continuation in
            queue.async {
                continuation.resume(returning: self.performHere(request, timeout: timeout, outputLimit: outputLimit))
            }
        }
    }

    /// `perform`, on the session's queue, with the VM's exits and time filled in.
    private func performHere(_ request: SessionRequest, timeout: Double, outputLimit: Int) -> SessionReply {
        let started = ContinuousClock.now
        let exits = vm.statistics.exits
        var reply = turn(request, timeout: timeout, outputLimit: outputLimit)
        reply.exits = vm.statistics.exits &- exits
        let elapsed = (ContinuousClock.now - started).components
        reply.microseconds = Int(elapsed.seconds) * 1_000_000 + Int(elapsed.attoseconds / 1_000_000_000_000)
        return reply
    }

    /// One turn of the driver: `request` in, its reply out (a failure the host saw when there
    /// is no readable reply, and the session restarts at the next request).
    private func turn(_ request: SessionRequest, timeout: Double, outputLimit: Int) -> SessionReply {
        let frame: [UInt8]
        do { frame = try request.frame() } catch {
            return .failure("InvalidRequest", "the request could not be encoded: \(error)")
        }
        if needsRestart {
            do {
                try vm.reset()
                needsRestart = false
            } catch {
                return .failure("SessionBroken", "the session could not be restarted (\(error)); close it and open another")
            }
        }
        vm.startTurn()
        vm.standardInput = .bytes(frame)
        // At `timeout` a SIGINT (KeyboardInterrupt in the cell: the session keeps its state);
        // a cell that does not stop for it is ended `grace` later and the session restarts.
        let grace = min(max(timeout / 4, 0.5), 3)
        vm.timeout = timeout + grace
        let signals = vm.signalSender
        let interrupted = Mutex(false)
        let softTimeout = DispatchWorkItem {
            interrupted.withLock { $0 = true }
            signals.send(SIGINT)
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: softTimeout)
        let outcome: RunOutcome
        do { outcome = try vm.runUntilInputNeeded() } catch {
            softTimeout.cancel()
            needsRestart = true
            return .failure("SessionBroken", "the session's VM failed: \(error)")
        }
        softTimeout.cancel()
        let stdout = vm.capturedOutput(fd: 1), stderr = vm.capturedOutput(fd: 2)
        let rawError = String(decoding: stderr.prefix(outputLimit), as: UTF8.self)
        if outcome == .ready, var reply = SessionReply.parse(stdout, limit: outputLimit) {
            if !rawError.isEmpty { reply.stderr = rawError + (reply.stderr ?? "") }
            if interrupted.withLock({ $0 }), reply.error?.type == "KeyboardInterrupt" {
                reply.error?.type = "Timeout"
                reply.error?.message = "the request ran past its \(Self.format(timeout)) s limit and was interrupted (KeyboardInterrupt); the session keeps its variables and files"
            }
            return reply
        }
        needsRestart = true
        let printed = String(decoding: stdout.prefix(outputLimit), as: UTF8.self)
        let lost = "The session was restarted: its variables, imports and files are gone."
        let reply: SessionReply
        switch outcome {
        case .timedOut:
            reply = .failure("Timeout", "the request ran past its \(Self.format(timeout)) s limit and did not stop when interrupted. \(lost)")
        case .exited(let status):
            reply = .failure("SessionExited", "the interpreter exited with status \(status) (os._exit or a fatal error). \(lost)")
        case .interrupted:
            reply = .failure("Interrupted", "the request was stopped (the session was closed or the server is stopping). \(lost)")
        case .ready:
            reply = .failure("SessionRestarted", "the session's answer could not be read (did the code read the driver's input or write over its output?). \(lost)")
        default:
            reply = .failure("SessionCrashed", "the interpreter ended: \(outcome). \(lost)")
        }
        var withOutput = reply
        withOutput.stdout = printed.replacingMarker()
        withOutput.stderr = rawError
        withOutput.restarted = true
        return withOutput
    }

    private static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }
}

private extension String {
    /// The text without the driver's answer marker (a half-written answer stays readable).
    func replacingMarker() -> String {
        let marker = String(decoding: PythonDriver.marker, as: UTF8.self)
        guard let range = range(of: marker) else { return self }
        return String(self[..<range.lowerBound])
    }
}
