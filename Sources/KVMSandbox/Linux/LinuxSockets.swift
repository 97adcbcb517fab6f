import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Sockets, for socket mode only (`SandboxConfiguration.acceptsConnections`); otherwise every
/// `socket` is `EACCES`, as there is no network.
///
/// In socket mode the guest may create TCP sockets and make one of them a listening socket
/// with `bind` and `listen`: nothing is bound on the host (the embedder owns the real listening
/// socket). The embedder hands the sandbox connections it accepted (`Sandbox.offerConnection`);
/// they are what the guest's `accept` returns, as guest descriptors backed by the real
/// connection, so `read`/`write`/`recvfrom`/`sendto`/`recvmsg`/`sendmsg`/`shutdown`, socket
/// options, `getsockname`/`getpeername` and `poll`/`epoll` over them act on it. Outgoing
/// connections (`connect`) reach only the IPv4 destinations `SandboxConfiguration.allowedConnections`
/// names (then the socket is a real connection too); every other kind of socket is refused.
extension LinuxPersonality {
    /// AF_UNIX, AF_INET, AF_INET6; SOCK_STREAM; SOCK_NONBLOCK, SOCK_CLOEXEC.
    static let inet: UInt64 = 2, inet6: UInt64 = 10
    static let socketNonblocking: UInt64 = 0o4000, socketCloseOnExec: UInt64 = 0o2000000

    /// `socket(domain, type, protocol)`: a TCP socket of the guest's own (socket mode, allowed
    /// destinations), or an AF_UNIX stream socket.
    func createSocket(domain: UInt64, type: UInt64, protocol: UInt64) -> HostCallEffect {
        let kind = type & ~(Self.socketNonblocking | Self.socketCloseOnExec)
        // AF_UNIX streams lead only to the sandbox's own processes (`LinuxUnixSockets`): no permission needed.
        let unix = domain == Self.unixFamily && kind == 1 && `protocol` == 0
        guard unix || (acceptsConnections || !allowedConnections.isEmpty) && (domain == Self.inet || domain == Self.inet6) && kind == 1
                && (`protocol` == 0 || `protocol` == 6) else { return Self.fail(.permissionDenied) }
        let id = state.nextObject
        let status = O_RDWR | (type & Self.socketNonblocking != 0 ? O_NONBLOCK : 0)
        guard let fd = state.files.install(OpenFile(kind: .socket(id: id), statusFlags: status, path: "socket:[\(id)]"),
                                           closeOnExec: type & Self.socketCloseOnExec != 0) else { return Self.fail(.tooManyOpenFiles) }
        state.nextObject += 1
        state.sockets[id] = VirtualSocket(family: UInt16(domain))
        return .value(Int64(fd))
    }

    /// `bind(fd, address, length)`: the guest's one listening address (nothing is bound on the host).
    func bind(_ fd: Int64, _ memory: GuestMemoryView, address: UInt64, length: UInt64) throws -> HostCallEffect {
        guard let id = virtualSocket(fd) else { return notASocket(fd) }
        if unixSocket(fd) != nil { return try bindUnix(id, memory, address: address, length: length) }
        guard acceptsConnections else { return Self.fail(.permissionDenied) }  // outgoing connections only
        guard (16...128).contains(length) else { return Self.fail(.invalidArgument) }
        let bytes = try memory.read(address, count: Int(length))
        guard UInt64(UInt16(littleEndianBytes: bytes[0..<2])) == UInt64(state.sockets[id]?.family ?? 0) else {
            return Self.fail(Errno(rawValue: 97))   // EAFNOSUPPORT
        }
        guard state.sockets[id]?.address == nil else { return Self.fail(.invalidArgument) }
        // One listening address per guest: it stands for the embedder's real one.
        guard !state.sockets.values.contains(where: { $0.address != nil }) else { return Self.fail(.addressInUse) }
        state.sockets[id]?.address = bytes
        return .value(0)
    }

    /// `listen(fd, backlog)`.
    func listen(_ fd: Int64, backlog: UInt64 = 128) -> HostCallEffect {
        guard let id = virtualSocket(fd) else { return notASocket(fd) }
        if unixSocket(fd) != nil { return listenUnix(id, backlog: backlog) }
        guard state.sockets[id]?.address != nil else { return Self.fail(.addressRequired) }
        state.sockets[id]?.listening = true
        return .value(0)
    }

    /// `sendto(fd, buffer, length, flags, address, address length)`: connected sockets only.
    func sendTo(_ call: HostCall) throws -> HostCallEffect {
        guard call[4] == 0 else { return Self.fail(.socketIsConnected) }
        return try send(call.descriptor(0), call.memory, vectors: [(call[1], call[2])], flags: call[3])
    }

    /// `sendmsg` (`sending`) and `recvmsg(fd, struct msghdr *, flags)`: no ancillary data, no addresses.
    func message(_ call: HostCall, sending: Bool) throws -> HostCallEffect {
        let memory = call.memory
        let header = try memory.read(call[1], count: 56)
        let table = UInt64(littleEndianBytes: header[16..<24]), count = UInt64(littleEndianBytes: header[24..<32])
        guard count <= UInt64(BuiltinHostCalls.maximumIOVectors) else { return Self.fail(.invalidArgument) }
        let entries = try memory.read(table, count: Int(count) * 16)
        let vectors = (0..<Int(count)).map {
            (UInt64(littleEndianBytes: entries[$0 * 16..<$0 * 16 + 8]), UInt64(littleEndianBytes: entries[$0 * 16 + 8..<$0 * 16 + 16]))
        }
        if sending { return try send(call.descriptor(0), memory, vectors: vectors, flags: call[2]) }
        let result = try receive(call.descriptor(0), memory, vectors: vectors, flags: call[2],
                                 address: UInt64(littleEndianBytes: header[0..<8]), length: 0)
        // No ancillary data and no source address, ever.
        if case .value(let n) = result, n >= 0 {
            try memory.write([UInt8](repeating: 0, count: 4), to: call[1] + 8)
            try memory.write([UInt8](repeating: 0, count: 8), to: call[1] + 40)
            try memory.write([UInt8](repeating: 0, count: 4), to: call[1] + 48)
        }
        return result
    }

    /// `shutdown(fd, how)`.
    func shutdown(_ fd: Int64, how: UInt64) -> HostCallEffect {
        guard how <= 2 else { return Self.fail(.invalidArgument) }
        guard let host = connection(fd) else { return notConnected(fd) }
        return Glibc.shutdown(host.fd, Int32(how)) == 0 ? .value(0) : Self.fail(Errno.current)
    }

    /// `getsockname` (`peer` false) and `getpeername(fd, address, length)`.
    func socketName(_ fd: Int64, peer: Bool, _ memory: GuestMemoryView, address: UInt64, length: UInt64) throws -> HostCallEffect {
        if let host = connection(fd) {
            var storage = sockaddr_storage()
            var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let status = withUnsafeMutableBytes(of: &storage) { raw in
                raw.withMemoryRebound(to: sockaddr.self) {
                    peer ? getpeername(host.fd, $0.baseAddress, &size) : getsockname(host.fd, $0.baseAddress, &size)
                }
            }
            guard status == 0 else { return Self.fail(Errno.current) }
            let bytes = withUnsafeBytes(of: &storage) { Array($0.prefix(Int(size))) }
            return try storeAddress(bytes, memory, address: address, length: length)
        }
        guard let id = virtualSocket(fd) else { return notASocket(fd) }
        guard !peer else { return Self.fail(.socketNotConnected) }
        let family = state.sockets[id]?.family ?? UInt16(Self.inet)
        let unbound = family.littleEndianBytes + [UInt8](repeating: 0, count: family == UInt16(Self.inet6) ? 26 : 14)
        return try storeAddress(state.sockets[id]?.address ?? unbound, memory, address: address, length: length)
    }

    /// `setsockopt(fd, level, name, value, length)`.
    func setSocketOption(_ fd: Int64, level: UInt64, name: UInt64, _ memory: GuestMemoryView, value address: UInt64, length: UInt64) throws -> HostCallEffect {
        guard length <= 256 else { return Self.fail(.invalidArgument) }
        let value = try memory.read(address, count: Int(length))
        if let host = connection(fd) {
            // Options that only shape this connection's traffic reach it; others are accepted and ignored.
            // SO_LINGER reaches it only when it cannot make the host's close wait (off, or an
            // abortive {1, 0}): a guest-chosen linger would block the host's own close() for up
            // to l_linger seconds past the run's deadline while the peer does not read.
            let level = Int32(truncatingIfNeeded: level), name = Int32(truncatingIfNeeded: name)
            let passed = (level == SOL_SOCKET && name == SO_KEEPALIVE) || (level == 6 && name == 1)  // TCP_NODELAY
                || (level == SOL_SOCKET && name == SO_LINGER && Self.lingerCannotBlock(value))
            guard passed else { return .value(0) }
            let status = value.withUnsafeBytes { setsockopt(host.fd, level, name, $0.baseAddress, socklen_t(value.count)) }
            return status == 0 ? .value(0) : Self.fail(Errno.current)
        }
        return virtualSocket(fd) == nil ? notASocket(fd) : .value(0)
    }

    /// Whether a `struct linger` (l_onoff, l_linger: two Int32) leaves `close` non-blocking.
    static func lingerCannotBlock(_ value: [UInt8]) -> Bool {
        guard value.count >= 8 else { return false }
        return Int32(littleEndianBytes: value[0..<4]) == 0 || Int32(littleEndianBytes: value[4..<8]) == 0
    }

    /// Port and IPv4 address (a `sockaddr_in`'s bytes 2..<8) of `"a.b.c.d:port"`, or nil.
    static func destination(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]), port != 0 else { return nil }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false).compactMap { UInt8($0) }
        guard octets.count == 4 else { return nil }
        return [UInt8(port >> 8), UInt8(port & 0xff)] + octets
    }

    /// connect(2): only an unbound TCP socket, only to an allowed IPv4 destination; the socket
    /// becomes a real connection. A non-blocking socket gets `EINPROGRESS` as on Linux (poll for
    /// POLLOUT, then `SO_ERROR`); a blocking one waits, within the run's deadline.
    func connect(_ fd: Int64, _ memory: GuestMemoryView, address: UInt64, length: UInt64) throws -> HostCallEffect {
        if connection(fd) != nil { return Self.fail(.socketIsConnected) }
        guard let id = virtualSocket(fd), let file = state.files[fd] else { return notASocket(fd) }
        if unixSocket(fd) != nil { return try connectUnix(fd, id, memory, address: address, length: length) }
        guard state.sockets[id]?.address == nil else { return Self.fail(.invalidArgument) }
        guard (16...128).contains(length) else { return Self.fail(.invalidArgument) }
        let bytes = try memory.read(address, count: 16)
        guard UInt16(littleEndianBytes: bytes[0..<2]) == UInt16(Self.inet), allowedConnections.contains(Array(bytes[2..<8])) else {
            return Self.fail(.permissionDenied)
        }
        let host = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard host >= 0 else { return Self.fail(Errno.current) }
        let hostFile = HostFile(fd: host)
        var target = sockaddr_in()
        withUnsafeMutableBytes(of: &target) { $0.copyBytes(from: bytes) }
        let started = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(host, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard started == 0 || errno == EINPROGRESS else { return Self.fail(Errno.current) }
        state.files.update(fd) { $0.kind = .connection(hostFile) }
        state.sockets[id] = nil
        if started == 0 { return .value(0) }
        if file.statusFlags & O_NONBLOCK != 0 { return Self.fail(.nowInProgress) }
        if let error = waitForHost(host, events: POLLOUT) { return Self.fail(error) }
        var failure: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(host, SOL_SOCKET, SO_ERROR, &failure, &size)
        return failure == 0 ? .value(0) : Self.fail(Errno(rawValue: failure))
    }

    /// The id of the virtual socket (listening or not) behind `fd`.
    func virtualSocket(_ fd: Int64) -> Int? {
        guard case .socket(let id) = state.files[fd]?.kind else { return nil }
        return id
    }

    /// The real connection behind `fd`.
    /// socketpair(AF_UNIX, SOCK_STREAM or SOCK_DGRAM): a host socket pair whose two ends are
    /// the guest's (asyncio's self-pipe, subprocess plumbing): it leads nowhere but to itself,
    /// so it needs no network permission. Its ends are connections, read and written (and
    /// waited on within the deadline) as an offered connection is.
    func socketPair(domain: UInt64, type: UInt64, protocol socketProtocol: UInt64, _ memory: GuestMemoryView, into address: UInt64) throws -> HostCallEffect {
        let kind = type & ~(Self.socketNonblocking | Self.socketCloseOnExec)
        guard domain == 1 else { return Self.fail(Errno(rawValue: 97)) }  // EAFNOSUPPORT: AF_UNIX only
        guard kind == 1 || kind == 2 || kind == 5, socketProtocol == 0 else { return Self.fail(.invalidArgument) }
        try memory.checkWritable(address, count: 8)
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(kind) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            return Self.fail(Errno.current)
        }
        let (first, second) = (HostFile(fd: ends[0]), HostFile(fd: ends[1]))
        let status = O_RDWR | (type & Self.socketNonblocking != 0 ? O_NONBLOCK : 0)
        let closeOnExec = type & Self.socketCloseOnExec != 0
        var table = state.files
        guard let a = table.install(OpenFile(kind: .connection(first), statusFlags: status, path: "socket:[\(ends[0])]"), closeOnExec: closeOnExec),
              let b = table.install(OpenFile(kind: .connection(second), statusFlags: status, path: "socket:[\(ends[1])]"), closeOnExec: closeOnExec) else {
            return Self.fail(.tooManyOpenFiles)
        }
        try memory.write(UInt32(a).littleEndianBytes + UInt32(b).littleEndianBytes, to: address)
        state.files = table
        return .value(0)
    }

    func connection(_ fd: Int64) -> HostFile? {
        guard case .connection(let host) = state.files[fd]?.kind else { return nil }
        return host
    }

    /// EBADF for a closed descriptor, ENOTSOCK for anything else.
    func notASocket(_ fd: Int64) -> HostCallEffect { Self.fail(state.files[fd] == nil ? .badFileDescriptor : .notSocket) }

    /// EBADF, ENOTSOCK, or ENOTCONN for a socket that is not a connection.
    func notConnected(_ fd: Int64) -> HostCallEffect {
        virtualSocket(fd) != nil ? Self.fail(.socketNotConnected) : notASocket(fd)
    }

    /// Whether `fd` is the listening socket (socket mode's; unix sockets are the sandbox's own).
    func isListening(_ fd: Int64) -> Bool {
        guard let id = virtualSocket(fd), state.sockets[id]?.family != UInt16(Self.unixFamily) else { return false }
        return state.sockets[id]?.listening ?? false
    }

    /// Whether the guest has a listening socket (socket mode's).
    var listens: Bool { state.sockets.values.contains { $0.listening && $0.family != UInt16(Self.unixFamily) } }

    /// `accept(fd, address, length)` (`flags` 0) and `accept4(..., flags)`: a connection the
    /// embedder offered.
    func accept(_ fd: Int64, _ memory: GuestMemoryView, address: UInt64, length: UInt64, flags: UInt64) throws -> HostCallEffect {
        guard flags & ~(Self.socketNonblocking | Self.socketCloseOnExec) == 0 else { return Self.fail(.invalidArgument) }
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        if let id = unixSocket(fd) { return try acceptUnix(fd, id, memory, address: address, length: length, flags: flags) }
        guard isListening(fd) else { return Self.fail(virtualSocket(fd) == nil ? .notSocket : .invalidArgument) }
        guard !state.pendingConnections.isEmpty else {
            // Nothing offered yet: a blocking accept waits (the ready point of socket mode).
            return Self.fail(file.statusFlags & O_NONBLOCK != 0 ? .resourceTemporarilyUnavailable : Self.restart)
        }
        // The guest's address buffer must be good before the connection is taken.
        var room: UInt32 = 0
        if address != 0 {
            room = UInt32(littleEndianBytes: try memory.read(length, count: 4))
            guard Int32(bitPattern: room) >= 0 else { return Self.fail(.invalidArgument) }
            try memory.checkWritable(length, count: 4)
            try memory.checkWritable(address, count: Int(min(room, 128)))
        }
        let host = state.pendingConnections.removeFirst()
        let status = O_RDWR | (flags & Self.socketNonblocking != 0 ? O_NONBLOCK : 0)
        guard let new = state.files.install(OpenFile(kind: .connection(host), statusFlags: status, path: "socket:[\(host.fd)]"),
                                            closeOnExec: flags & Self.socketCloseOnExec != 0) else {
            state.pendingConnections.insert(host, at: 0)
            return Self.fail(.tooManyOpenFiles)
        }
        if address != 0 {
            var storage = sockaddr_storage()
            var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let status = withUnsafeMutableBytes(of: &storage) { raw in
                raw.withMemoryRebound(to: sockaddr.self) { getpeername(host.fd, $0.baseAddress, &size) }
            }
            let bytes = status == 0 ? withUnsafeBytes(of: &storage) { Array($0.prefix(Int(size))) } : [2, 0] + [UInt8](repeating: 0, count: 14)
            _ = try storeAddress(bytes, memory, address: address, length: length)
        }
        return .value(Int64(new))
    }

    /// Writes a socket address the way the kernel does: at most `*length` bytes of it, and its
    /// full size into `*length`.
    func storeAddress(_ bytes: [UInt8], _ memory: GuestMemoryView, address: UInt64, length: UInt64) throws -> HostCallEffect {
        guard address != 0 else { return .value(0) }
        let room = UInt32(littleEndianBytes: try memory.read(length, count: 4))
        guard Int32(bitPattern: room) >= 0 else { return Self.fail(.invalidArgument) }
        try memory.write(Array(bytes.prefix(Int(room))), to: address)
        try memory.write(UInt32(bytes.count).littleEndianBytes, to: length)
        return .value(0)
    }

    /// send/sendto/sendmsg/write on a connection: as much of `vectors` as the socket takes
    /// (at most `transferLimit`), waiting for room unless it is non-blocking.
    func send(_ fd: Int64, _ memory: GuestMemoryView, vectors: [(base: UInt64, length: UInt64)], flags: UInt64) throws -> HostCallEffect {
        guard let host = connection(fd), let file = state.files[fd] else { return notConnected(fd) }
        var bytes: [UInt8] = []
        for (base, length) in vectors where bytes.count < Self.transferLimit {
            bytes += try memory.read(base, count: Int(min(length, UInt64(Self.transferLimit - bytes.count))))
        }
        let nonblocking = file.statusFlags & O_NONBLOCK != 0 || flags & UInt64(MSG_DONTWAIT) != 0
        while true {
            // MSG_NOSIGNAL: a peer that went away is EPIPE for the guest, never SIGPIPE for the host.
            let sent = bytes.withUnsafeBytes { Glibc.send(host.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if sent >= 0 { return .value(Int64(sent)) }
            guard errno == EAGAIN || errno == EINTR else { return Self.fail(Errno.current) }
            if nonblocking { return Self.fail(.resourceTemporarilyUnavailable) }
            if let error = waitForHost(host.fd, events: POLLOUT) { return Self.fail(error) }
        }
    }

    /// recv/recvfrom/recvmsg/read on a connection into `vectors` (at most `transferLimit`).
    /// A blocking socket waits for data: on the host when the guest has one thread, else by
    /// blocking the thread (the scheduler then watches the connection).
    func receive(_ fd: Int64, _ memory: GuestMemoryView, vectors: [(base: UInt64, length: UInt64)], flags: UInt64,
                 address: UInt64, length: UInt64) throws -> HostCallEffect {
        guard let host = connection(fd), let file = state.files[fd] else { return notConnected(fd) }
        guard flags & ~UInt64(MSG_PEEK | MSG_DONTWAIT | MSG_WAITALL | MSG_TRUNC | MSG_CMSG_CLOEXEC) == 0 else {
            return Self.fail(.notSupportedOnSocket)
        }
        let total = vectors.reduce(0) { min(Self.transferLimit, $0 + Int(min($1.length, UInt64(Self.transferLimit)))) }
        // A bad buffer fails before anything is taken from the connection.
        var room = total
        for (base, length) in vectors where room > 0 {
            let part = min(Int(min(length, UInt64(Self.transferLimit))), room)
            try memory.checkWritable(base, count: part)
            room -= part
        }
        var buffer = [UInt8](repeating: 0, count: total)
        let nonblocking = file.statusFlags & O_NONBLOCK != 0 || flags & UInt64(MSG_DONTWAIT) != 0
        var received = 0
        while true {
            received = buffer.withUnsafeMutableBytes {
                total == 0 ? 0 : recv(host.fd, $0.baseAddress, total, Int32(MSG_DONTWAIT) | Int32(flags & UInt64(MSG_PEEK)))
            }
            if received >= 0 { break }
            guard errno == EAGAIN || errno == EINTR else { return Self.fail(Errno.current) }
            if nonblocking { return Self.fail(.resourceTemporarilyUnavailable) }
            if state.threads.count > 1 { return Self.fail(Self.restart) }
            if let error = waitForHost(host.fd, events: POLLIN) { return Self.fail(error) }
        }
        var offset = 0
        for (base, length) in vectors where offset < received {
            let part = min(Int(min(length, UInt64(Self.transferLimit))), received - offset)
            try memory.write(Array(buffer[offset..<offset + part]), to: base)
            offset += part
        }
        if address != 0, length != 0 { _ = try storeAddress([], memory, address: address, length: length) }
        return .value(Int64(received))
    }

    /// Waits until host descriptor `fd` has `events`, in slices so that the run's deadline
    /// (the vCPU's kick) still ends the wait: nil when ready, else why not.
    func waitForHost(_ fd: Int32, events: Int32) -> Errno? {
        while true {
            if interrupter?.isInterrupted ?? false { return .interrupted }
            var descriptor = pollfd(fd: fd, events: Int16(events), revents: 0)
            let ready = Glibc.poll(&descriptor, 1, OutputWriter.pollSlice)
            if ready < 0 && errno != EINTR { return Errno.current }
            if ready > 0 { return nil }
        }
    }

    func socketOption(_ fd: Int64, level: UInt64, name: UInt64, _ memory: GuestMemoryView, value: UInt64, length: UInt64) throws -> HostCallEffect {
        let room = Int32(bitPattern: UInt32(littleEndianBytes: try memory.read(length, count: 4)))
        guard room >= 0 else { return Self.fail(.invalidArgument) }
        var answer: [UInt8]
        if let host = connection(fd) {
            guard level == UInt64(SOL_SOCKET) || level == 6 else { return Self.fail(.protocolNotAvailable) }
            var bytes = [UInt8](repeating: 0, count: 256)
            var size = socklen_t(min(Int(room), 256))
            let status = bytes.withUnsafeMutableBytes { getsockopt(host.fd, Int32(level), Int32(truncatingIfNeeded: name), $0.baseAddress, &size) }
            guard status == 0 else { return Self.fail(Errno.current) }
            answer = Array(bytes.prefix(Int(size)))
        } else if let id = virtualSocket(fd) {
            guard level == UInt64(SOL_SOCKET) || level == 6 else { return Self.fail(.protocolNotAvailable) }
            var word: UInt32 = 0
            if level == UInt64(SOL_SOCKET) {
                switch Int32(truncatingIfNeeded: name) {
                case SO_TYPE: word = 1                                  // SOCK_STREAM
                case SO_ACCEPTCONN: word = state.sockets[id]?.listening == true ? 1 : 0
                case SO_DOMAIN: word = UInt32(state.sockets[id]?.family ?? 2)
                case SO_RCVBUF, SO_SNDBUF: word = 212_992
                default: word = 0
                }
            }
            answer = Array(word.littleEndianBytes.prefix(Int(room)))
        } else {
            return notASocket(fd)
        }
        try memory.write(answer, to: value)
        try memory.write(UInt32(answer.count).littleEndianBytes, to: length)
        return .value(0)
    }

    /// Readiness of a socket: a listening socket is readable with a connection pending; a
    /// connection as the host says.
    func socketReadiness(_ kind: OpenFile.Kind) -> UInt32 {
        switch kind {
        case .socket(let id):
            if state.sockets[id]?.family == UInt16(Self.unixFamily) { return unixReadiness(id) }
            return state.sockets[id]?.listening == true && !state.pendingConnections.isEmpty ? 1 : 0
        case .connection(let host):
            var descriptor = pollfd(fd: host.fd, events: Int16(POLLIN | POLLOUT | 0x2000), revents: 0)
            guard Glibc.poll(&descriptor, 1, 0) > 0 else { return 0 }
            return UInt32(UInt16(bitPattern: descriptor.revents))
        default: return 0
        }
    }

    /// Whether `call` is about to wait for a connection: `accept` on the listening socket, or
    /// `poll`/`epoll_wait` over it, with no connection pending and none open. Socket mode's
    /// ready point: at start-up, and in a fork when the guest is done with its connection.
    func waitsForConnection(_ call: HostCall) -> Bool {
        guard state.pendingConnections.isEmpty, listens,
              !state.files.refersTo({ if case .connection = $0 { return true } else { return false } }) else { return false }
        switch Self.systemCalls[call.number]?.connectionWait {
        case .accept?: return isListening(call.descriptor(0))
        case .poll?:
            guard call[1] <= UInt64(Self.pollLimit), let entries = try? call.memory.read(call[0], count: Int(call[1]) * 8) else { return false }
            return (0..<Int(call[1])).contains {
                isListening(Int64(Int32(bitPattern: UInt32(littleEndianBytes: entries[$0 * 8..<$0 * 8 + 4]))))
            }
        case .epoll?:
            guard case .epoll(let id) = state.files[call.descriptor(0)]?.kind else { return false }
            return (state.epolls[id] ?? [:]).keys.contains { isListening(Int64($0)) }
        case nil: return false
        }
    }

    /// Sleeps up to `nanoseconds`, ending early when one of `watchedHostDescriptors` becomes
    /// readable (then true).
    func waitForHostDescriptors(nanoseconds: UInt64) -> Bool {
        // Only a thread waiting for I/O can want them (else readable data nobody reads would
        // end every wait at once).
        let waiting = state.threads.contains { $0.wait == .io }
        var watched = waiting ? watchedHostDescriptors() : []
        // Another process's futex wake on shared memory rings the doorbell.
        // So does a connection to a unix socket this process listens on.
        var doorbells = waiting ? unixListenerDoorbells() : []
        if waiting && !sharedWaits.isEmpty, let doorbell { doorbells.append(doorbell) }
        let hostCount = watched.count
        watched += doorbells.map(\.fd)
        var descriptors = watched.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let milliseconds = Int32(min((nanoseconds + 999_999) / 1_000_000, 1_000))
        let ready = Glibc.poll(&descriptors, nfds_t(descriptors.count), milliseconds) > 0
        if ready {
            for (index, doorbell) in doorbells.enumerated() where descriptors[hostCount + index].revents != 0 { doorbell.drain() }
        }
        return ready
    }

    /// The host descriptors a waiting thread may be waiting for (open connections, a host
    /// standard input), for the scheduler's idle wait.
    func watchedHostDescriptors() -> [Int32] {
        var result: [Int32] = []
        for file in state.files.descriptions.values {
            switch file.kind {
            case .connection(let host): result.append(host.fd)
            case .standardInput: if case .fileDescriptor(let host) = input { result.append(host) }
            default: break
            }
        }
        return result
    }
}

/// A socket of the guest's that has no host counterpart: one being set up, or the listening
/// socket, which stands for the embedder's real one.
struct VirtualSocket: Equatable, Codable {
    /// AF_INET or AF_INET6, or AF_UNIX (`LinuxUnixSockets`).
    var family: UInt16
    /// An AF_UNIX socket's name in `UnixSocketNames`, once bound.
    var name: String?
    /// The address the guest bound it to (a `sockaddr`, as given).
    var address: [UInt8]?
    var listening = false
}
