import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Enforces a run's deadline: a timer that, when it fires, kicks the vCPU thread out of `KVM_RUN`
/// (`immediate_exit` plus a signal), however the guest is spinning.
///
/// `disarm()` guarantees no kick is sent afterwards, so the vCPU outlives every use of the kicker.
final class Watchdog {
    private final class Deadline: Sendable {
        enum State { case armed, fired, disarmed }
        let state = Mutex(State.armed)
    }
    private let deadline = Deadline()
    private let timer: any DispatchSourceTimer

    /// Arms a deadline `seconds` from now for the calling thread's vCPU.
    init(seconds: Double, interrupter: VCPUInterrupter) {
        let thread = pthread_self()
        _ = VCPUInterrupter.signal  // install the handler before any kick
        timer = DispatchSource.makeTimerSource(queue: .global(qos: .userInitiated))
        timer.schedule(deadline: .now() + seconds, leeway: .microseconds(200))
        timer.setEventHandler { [deadline] in
            deadline.state.withLock { current in
                guard current == .armed else { return }
                current = .fired
                interrupter.interrupt(thread: thread)
            }
        }
        timer.activate()
    }

    /// Whether the deadline has passed and the vCPU was kicked.
    var fired: Bool { deadline.state.withLock { $0 == .fired } }

    /// Stops the timer; no kick happens after this returns.
    func disarm() {
        deadline.state.withLock { current in
            if current == .armed { current = .disarmed }
        }
        timer.cancel()
    }
}
