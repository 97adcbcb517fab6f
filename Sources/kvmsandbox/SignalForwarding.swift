import Dispatch
import KVMSandbox
#if canImport(Glibc)
import Glibc
#endif

/// What `run` does with the signals a terminal or a supervisor sends it: SIGINT, SIGTERM and
/// SIGHUP go to the guest (its handler runs, as under `docker run`), and `grace` seconds after
/// the first one the guest gets SIGKILL, so a guest that ignores them still ends, and its report
/// is still written. Stopping puts the default actions back.
final class SignalForwarding {
    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    private let queue = DispatchQueue(label: "kvmsandbox.signals")
    private var sources: [any DispatchSourceSignal] = []

    /// Forwards the signals to `sender` from now on.
    init(to sender: HostSignals, grace: Double) {
        let queue = self.queue
        var started = false  // touched on `queue` only
        for number in Self.forwarded {
            signal(number, SIG_IGN)  // the dispatch source sees it; the default action would end the CLI
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                sender.send(number)
                guard !started else { return }
                started = true
                queue.asyncAfter(deadline: .now() + max(0, grace)) { sender.send(SIGKILL) }
            }
            source.resume()
            sources.append(source)
        }
    }

    /// Stops forwarding; the signals' default actions are back.
    func stop() {
        for source in sources { source.cancel() }
        sources = []
        for number in Self.forwarded { signal(number, SIG_DFL) }
    }
}
