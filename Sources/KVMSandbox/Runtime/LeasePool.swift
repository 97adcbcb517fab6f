
/// Up to `capacity` reusable objects handed to one task at a time: an idle one if there is one,
/// else a new one while fewer than `capacity` exist, else the caller waits for one to come back.
/// The machinery under `SandboxPool` and `ParkedPool`.
final class LeasePool<Element: AnyObject & Sendable>: Sendable {
    let capacity: Int
    private let make: @Sendable () throws -> Element
    private let state = HostMutex(State())

    private struct State {
        var idle: [Element] = []
        var count = 0
        var waiters: [CheckedContinuation<Element?, Never>] = []
        /// Each element's host thread (`HostWorker`), made on its first lease, dropped with it.
        var workers: [ObjectIdentifier: HostWorker] = [:]
    }

    /// `element`'s host thread, made on its first lease.
    private func worker(for element: Element) throws(SandboxError) -> HostWorker {
        let key = ObjectIdentifier(element)
        if let worker = state.withLock({ $0.workers[key] }) { return worker }
        let worker = try HostWorker()
        state.withLock { $0.workers[key] = worker }
        return worker
    }

    /// A pool of up to `capacity` elements, `prefork` of them made now.
    init(capacity: Int, prefork: Int, make: @escaping @Sendable () throws -> Element) throws {
        guard capacity > 0, (0...capacity).contains(prefork) else {
            throw SandboxError.invalidConfiguration("pool capacity must be positive and prefork within it")
        }
        self.capacity = capacity
        self.make = make
        let ready = try (0..<prefork).map { _ in try make() }
        state.withLock { $0.idle = ready; $0.count = ready.count }
    }

    /// Elements that exist now, and how many of them are idle.
    var counts: (total: Int, idle: Int) { state.withLock { ($0.count, $0.idle.count) } }

    /// Runs `work` with an element of its own on a host thread of its own (`HostThread.run`:
    /// the caller's task suspends, its thread is free), then keeps the element when `work`
    /// says so, else drops it (its slot freed). `interrupt` runs if the task is cancelled
    /// meanwhile.
    func lease<R: Sendable>(_ work: @Sendable (Element) -> (result: R, keep: Bool),
                            interrupt: @Sendable (Element) -> Void = { _ in }) async throws -> R {
        let element = try await take()
        let worker: HostWorker
        do { worker = try self.worker(for: element) } catch {
            release(element)
            throw error
        }
        let done = await HostThread.run(on: worker, { work(element) }, onCancel: { interrupt(element) })
        if !done.keep { state.withLock { _ = $0.workers.removeValue(forKey: ObjectIdentifier(element)) } }
        release(done.keep ? element : nil)
        return done.result
    }

    private enum Next { case use(Element), create, wait }

    private func take() async throws -> Element {
        let next: Next = state.withLock { state in
            if let element = state.idle.popLast() { return .use(element) }
            if state.count < capacity { state.count += 1; return .create }
            return .wait
        }
        switch next {
        case .use(let element): return element
        case .create: return try makeForFreeSlot()
        case .wait:
            let handed = await withCheckedContinuation { continuation in
                let immediate: Element?? = state.withLock { state in
                    if let element = state.idle.popLast() { return .some(element) }
                    if state.count < capacity { state.count += 1; return .some(nil) }
                    state.waiters.append(continuation)
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
            // nil: a slot freed up (an element was dropped); make a new one for it.
            if let handed { return handed }
            return try makeForFreeSlot()
        }
    }

    private func makeForFreeSlot() throws -> Element {
        do { return try make() } catch {
            release(nil)
            throw error
        }
    }

    /// Hands `element` (or, for nil, a free slot) to a waiter, or keeps it idle.
    private func release(_ element: Element?) {
        let waiter: CheckedContinuation<Element?, Never>? = state.withLock { state in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            if let element { state.idle.append(element) } else { state.count -= 1 }
            return nil
        }
        waiter?.resume(returning: element)
    }
}
