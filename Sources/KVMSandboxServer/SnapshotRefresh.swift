import Dispatch
import Foundation
import KVMSandbox
import Logging

/// When a server boots a new snapshot of its program and swaps it in. Every request served
/// from one snapshot starts from the same memory: the same PRNG states, hash seeds, stack
/// canary and address layout. Refreshing bounds how long a value learned in one request stays
/// useful: after `afterRequests` requests or `every` seconds, whichever comes first, a new
/// snapshot (a fresh boot: new layout, new AT_RANDOM, new seeds) is made in the background and
/// takes over new requests; requests in flight finish on the old one.
public struct RefreshPolicy: Sendable, Equatable {
    /// Requests (socket mode: connections) served from one snapshot; nil for no count.
    public var afterRequests: Int?
    /// Seconds one snapshot serves; nil for no limit.
    public var every: Double?

    /// A policy; both nil (the default) never refreshes.
    public init(afterRequests: Int? = nil, every: Double? = nil) {
        self.afterRequests = afterRequests
        self.every = every
    }

    /// Whether this policy ever refreshes.
    public var refreshes: Bool { afterRequests != nil || every != nil }
}

/// The current generation of something built from a fresh snapshot (a pool of forks, or the
/// snapshot itself), rebuilt in the background by `make` when the `RefreshPolicy` says so. A
/// failed rebuild is logged and the current one keeps serving (the next request tries again).
final class Refreshing<Resource: Sendable>: Sendable {
    private struct State {
        var current: Resource
        var generation = 0
        var served = 0
        var since: UInt64
        var rebuilding = false
    }
    private let state: HostMutex<State>
    private let policy: RefreshPolicy
    private let make: @Sendable () throws -> Resource
    private let logger: Logger
    /// Generations made so far besides the first.
    var refreshes: Int { state.withLock { $0.generation } }

    init(_ first: Resource, policy: RefreshPolicy, logger: Logger, make: @escaping @Sendable () throws -> Resource) {
        state = HostMutex(State(current: first, since: DispatchTime.now().uptimeNanoseconds))
        (self.policy, self.make, self.logger) = (policy, make, logger)
    }

    /// The current resource and its generation, without counting a request.
    var current: (resource: Resource, generation: Int) { state.withLock { ($0.current, $0.generation) } }

    /// The resource for one more request (counted), and its generation; starts a rebuild when
    /// one is due.
    func forRequest() -> (resource: Resource, generation: Int) {
        let (resource, generation, due) = state.withLock { state -> (Resource, Int, Bool) in
            state.served += 1
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds - state.since) / 1e9
            let due = !state.rebuilding && (policy.afterRequests.map { state.served >= $0 } == true || policy.every.map { elapsed >= $0 } == true)
            if due { state.rebuilding = true }
            return (state.current, state.generation, due)
        }
        if due { rebuild() }
        return (resource, generation)
    }

    private func rebuild() {
        let make = self.make
        Thread.detachNewThread { [self] in
            let started = DispatchTime.now().uptimeNanoseconds
            do {
                let fresh = try make()
                let generation = state.withLock { state -> Int in
                    state.current = fresh
                    state.generation += 1
                    state.served = 0
                    state.since = DispatchTime.now().uptimeNanoseconds
                    state.rebuilding = false
                    return state.generation
                }
                logger.info("snapshot refreshed (generation \(generation)) in \((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000) ms")
            } catch {
                // Try again after another period, not at once on every request.
                state.withLock { state in
                    state.rebuilding = false
                    state.served = 0
                    state.since = DispatchTime.now().uptimeNanoseconds
                }
                logger.error("could not refresh the snapshot (the current one keeps serving): \(error)")
            }
        }
    }
}
