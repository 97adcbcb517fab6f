import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// AF_UNIX stream sockets bound to a name, between the processes of one sandbox (gpg and its
/// agent, a daemon and its clients): `socket`, `bind` to a path or an abstract name, `listen`,
/// `accept`/`accept4`, `connect`, and `unlink` of the path. The names live in the sandbox's
/// `UnixSocketNames`, not on the host: a guest can reach only sockets its own sandbox bound,
/// in every mode (no network permission is needed, none is given). A connection is a host
/// socket pair, read, written and polled as any connection. Not offered: datagram sockets
/// (`EACCES`, as before), passing descriptors (`SCM_RIGHTS`), `stat` of the socket's path (it
/// has no file: `ENOENT`).
extension LinuxPersonality {
    static let unixFamily: UInt64 = 1

    /// The name in a `sockaddr_un` of `length` bytes: a normalized guest path, or NUL and an
    /// abstract name; nil when it is no name (`EINVAL`).
    func unixName(_ memory: GuestMemoryView, address: UInt64, length: UInt64) throws -> String? {
        guard (3...110).contains(length) else { return nil }
        let bytes = try memory.read(address, count: Int(length))
        guard UInt64(UInt16(littleEndianBytes: bytes[0..<2])) == Self.unixFamily else { return nil }
        let path = bytes[2...]
        if path.first == 0 { return "\u{0}" + String(decoding: path.dropFirst(), as: UTF8.self) }
        let text = String(decoding: path.prefix { $0 != 0 }, as: UTF8.self)
        guard !text.isEmpty else { return nil }
        return FileSystemView.normalize(text, cwd: state.cwd)
    }

    /// The unix socket behind `fd`, if it is one.
    func unixSocket(_ fd: Int64) -> Int? {
        guard let id = virtualSocket(fd), state.sockets[id]?.family == UInt16(Self.unixFamily) else { return nil }
        return id
    }

    /// `bind`: the name is the sandbox's from now on (`EADDRINUSE` when taken).
    func bindUnix(_ id: Int, _ memory: GuestMemoryView, address: UInt64, length: UInt64) throws -> HostCallEffect {
        guard state.sockets[id]?.address == nil else { return Self.fail(.invalidArgument) }
        guard let name = try unixName(memory, address: address, length: length) else { return Self.fail(.invalidArgument) }
        guard state.memoryFiles.socketNames.bind(name) != nil else { return Self.fail(.addressInUse) }
        state.sockets[id]?.address = try memory.read(address, count: Int(length))
        state.sockets[id]?.name = name
        return .value(0)
    }

    /// `listen`: connections to the name queue from now on.
    func listenUnix(_ id: Int, backlog: UInt64) -> HostCallEffect {
        guard let name = state.sockets[id]?.name, let listener = state.memoryFiles.socketNames.listener(name) else {
            return Self.fail(.invalidArgument)  // Linux's autobind is not offered: bind first
        }
        listener.listen(backlog: Int(min(backlog, UInt64(UnixListener.maximumBacklog))))
        state.sockets[id]?.listening = true
        return .value(0)
    }

    /// `connect`: to a listening socket of this sandbox (`ENOENT` for a name nobody bound,
    /// `ECONNREFUSED` when it does not listen); the socket becomes a connection.
    func connectUnix(_ fd: Int64, _ id: Int, _ memory: GuestMemoryView, address: UInt64, length: UInt64) throws -> HostCallEffect {
        guard state.sockets[id]?.listening == false else { return Self.fail(.invalidArgument) }
        guard let name = try unixName(memory, address: address, length: length) else { return Self.fail(.invalidArgument) }
        guard let listener = state.memoryFiles.socketNames.listener(name) else { return Self.fail(.noSuchFileOrDirectory) }
        switch listener.connect() {
        case .failure(let error): return Self.fail(error)
        case .success(let host):
            state.files.update(fd) { $0.kind = .connection(host) }
            state.sockets[id] = nil
            return .value(0)
        }
    }

    /// `accept` on a listening unix socket: the oldest queued connection, or a wait.
    func acceptUnix(_ fd: Int64, _ id: Int, _ memory: GuestMemoryView, address: UInt64, length: UInt64, flags: UInt64) throws -> HostCallEffect {
        guard let file = state.files[fd], state.sockets[id]?.listening == true, let name = state.sockets[id]?.name,
              let listener = state.memoryFiles.socketNames.listener(name) else { return Self.fail(.invalidArgument) }
        if address != 0 {
            try memory.checkWritable(length, count: 4)
            let room = UInt32(littleEndianBytes: try memory.read(length, count: 4))
            guard Int32(bitPattern: room) >= 0 else { return Self.fail(.invalidArgument) }
            try memory.checkWritable(address, count: Int(min(room, 110)))
        }
        guard let host = listener.accept() else {
            return Self.fail(file.statusFlags & O_NONBLOCK != 0 ? .resourceTemporarilyUnavailable : Self.restart)
        }
        let status = O_RDWR | (flags & Self.socketNonblocking != 0 ? O_NONBLOCK : 0)
        guard let new = state.files.install(OpenFile(kind: .connection(host), statusFlags: status, path: "socket:[\(host.fd)]"),
                                            closeOnExec: flags & Self.socketCloseOnExec != 0) else {
            return Self.fail(.tooManyOpenFiles)
        }
        // The peer of an accepted unix connection has no name: just the family.
        if address != 0 { _ = try storeAddress(UInt16(Self.unixFamily).littleEndianBytes, memory, address: address, length: length) }
        return .value(Int64(new))
    }

    /// Readiness of a listening unix socket: readable with a connection queued.
    func unixReadiness(_ id: Int) -> UInt32 {
        guard state.sockets[id]?.listening == true, let name = state.sockets[id]?.name else { return 0 }
        return state.memoryFiles.socketNames.listener(name)?.hasPending == true ? 1 : 0
    }

    /// The doorbells of the listening unix sockets this process holds (for the idle wait).
    func unixListenerDoorbells() -> [Doorbell] {
        var result: [Doorbell] = []
        for file in state.files.descriptions.values {
            guard case .socket(let id) = file.kind, let socket = state.sockets[id], socket.listening, let name = socket.name,
                  let doorbell = state.memoryFiles.socketNames.listener(name)?.doorbell else { continue }
            result.append(doorbell)
        }
        return result
    }
}
