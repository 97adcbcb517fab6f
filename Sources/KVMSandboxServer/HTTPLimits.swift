import KVMSandbox
import NIOCore
import NIOHTTP1

/// What an HTTP client may cost the server (function mode, the metrics endpoint). A client is
/// as hostile as a guest: without these, idle connections holding half a header exhaust the
/// descriptors and large concurrent bodies grow the host without bound.
public struct HTTPLimits: Sendable, Equatable {
    /// Connections served at once; past it the server stops accepting (they wait in the
    /// kernel's backlog, nothing is buffered, nothing spins).
    public var maximumConnections = 256
    /// Seconds from a connection's start to its first request's complete header.
    public var headerTimeout: Double = 10
    /// Seconds a kept-alive connection may wait for its next request after a response.
    public var idleTimeout: Double = 30
    /// Seconds from a request's header to the end of its body.
    public var bodyTimeout: Double = 60
    /// The largest request body; a larger one is answered 413 and the connection closed.
    public var maximumBody = 16 << 20
    /// Request-body bytes buffered across all connections; past it, connections stop being
    /// read (TCP backpressure) until requests finish.
    public var maximumBufferedBytes = 256 << 20

    /// The defaults above.
    public init() {}

    /// Why these limits cannot be used, or nil.
    public var problem: String? {
        if maximumConnections < 1 { return "the connection limit must be at least 1" }
        for (name, value) in [("header", headerTimeout), ("idle", idleTimeout), ("body", bodyTimeout)]
        where !(value.isFinite && value > 0 && value <= 86_400) {
            return "the \(name) timeout must be a positive number of seconds (at most a day)"
        }
        if maximumBody < 0 { return "the body limit must not be negative" }
        if maximumBufferedBytes < max(maximumBody, 1) { return "the buffered-bytes limit must be at least the body limit" }
        return nil
    }

    static func time(_ seconds: Double) -> TimeAmount { .nanoseconds(Int64(seconds * 1e9)) }
}

/// Closes a connection that is too slow: its first header past `headerTimeout`, a body past
/// `bodyTimeout`, a kept-alive connection idle past `idleTimeout`. Sits after the HTTP decoder;
/// no timer runs while a request is being answered (the VM has its own deadline).
final class HTTPDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let limits: HTTPLimits
    private var timer: Scheduled<Void>?

    init(limits: HTTPLimits) { self.limits = limits }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context, limits.headerTimeout) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context, limits.headerTimeout)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: arm(context, limits.bodyTimeout)
        case .body: break
        case .end: timer?.cancel(); timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { arm(context, limits.idleTimeout) }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    private func arm(_ context: ChannelHandlerContext, _ seconds: Double) {
        timer?.cancel()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: HTTPLimits.time(seconds)) { bound.value.close(promise: nil) }
    }
}

/// A count of something held (connections, buffered bytes) with a ceiling: `acquire` waits,
/// without spinning, until the amount fits, or until its task is cancelled (server shutdown);
/// `release` wakes waiters in order.
final class Allowance: Sendable {
    private struct Waiter {
        let id: UInt64
        let amount: Int
        let continuation: CheckedContinuation<Bool, Never>
    }
    private struct State {
        var available: Int
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }
    private let state: HostMutex<State>
    /// The ceiling.
    let total: Int

    init(_ total: Int) {
        self.total = total
        state = HostMutex(State(available: total))
    }

    /// Takes `amount` (at most the whole ceiling), waiting until it is free. False when the
    /// task was cancelled first (then nothing was taken).
    func acquire(_ amount: Int) async -> Bool {
        let amount = min(max(amount, 0), total)
        let id = state.withLock { state -> UInt64 in
            state.nextID &+= 1
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let answer = state.withLock { state -> Bool? in
                    if Task.isCancelled { return false }
                    if state.waiters.isEmpty && state.available >= amount {
                        state.available -= amount
                        return true
                    }
                    state.waiters.append(Waiter(id: id, amount: amount, continuation: continuation))
                    return nil
                }
                if let answer { continuation.resume(returning: answer) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    /// Gives back `amount` taken by `acquire`.
    func release(_ amount: Int) {
        let amount = min(max(amount, 0), total)
        let woken = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            state.available = min(state.available + amount, total)
            var woken: [CheckedContinuation<Bool, Never>] = []
            while let first = state.waiters.first, first.amount <= state.available {
                state.available -= first.amount
                woken.append(first.continuation)
                state.waiters.removeFirst()
            }
            return woken
        }
        for continuation in woken { continuation.resume(returning: true) }
    }

    /// What is free now.
    var available: Int { state.withLock { $0.available } }
}
