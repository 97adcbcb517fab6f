import Foundation
import KVMSandbox
@testable import KVMSandboxServer
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client to 127.0.0.1, for clients that misbehave on purpose.
struct RawClient {
    let fd: Int32

    init?(port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        var timeout = timeval(tv_sec: 15, tv_usec: 0)  // a read never hangs the test
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if !connected { _ = Glibc.close(fd); return nil }
    }

    func send(_ text: String) { _ = text.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }

    /// Everything until the server closes (or the 15 s read timeout).
    func readAll() -> String {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            result += buffer[0..<n]
        }
        return String(decoding: result, as: UTF8.self)
    }

    func close() { _ = Glibc.close(fd) }
}

extension KVMTests {
    /// HTTP clients against function mode (security round 3): limits on connections, slow
    /// clients, body sizes and buffered bytes, each with the answer a production server gives.
    @Suite struct HTTPClientLimits {
        static func serving(_ limits: HTTPLimits, _ body: @Sendable (Int) async throws -> Void) async throws {
            let code = LinuxFixtures.scratch("http-limits")
            try Data("import sys\nprint(len(sys.stdin.read()))\n".utf8).write(to: URL(fileURLWithPath: code + "/count.py"))
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", code + "/count.py"]
            configuration.files = [FileGrant(hostPath: code)]
            configuration.memorySize = 128 << 20
            configuration.timeout = 60
            let server = try FunctionServer(program: "/usr/bin/python3", configuration: configuration, workers: 2, requestTimeout: 10,
                                            limits: limits)
            let port = PortBox()
            let serving = Task { try await server.serve(host: "127.0.0.1", port: 0) { port.set($0) } }
            defer { serving.cancel() }
            for _ in 0..<200 where port.value == 0 { try await Task.sleep(nanoseconds: 20_000_000) }
            try #require(port.value != 0)
            try await body(port.value)
        }

        static func post(_ port: Int, _ body: String) -> String {
            guard let client = RawClient(port: port) else { return "no connection" }
            defer { client.close() }
            client.send("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
            return client.readAll()
        }

        /// A body past `--max-body` is answered 413 with a reason (declared or chunked), not a reset.
        @Test func oversizedBodiesGet413() async throws {
            var limits = HTTPLimits()
            limits.maximumBody = 1000
            try await Self.serving(limits) { port in
                #expect(Self.post(port, String(repeating: "x", count: 999)).hasSuffix("\r\n\r\n999\n"))
                let declared = Self.post(port, String(repeating: "x", count: 1001))
                #expect(declared.hasPrefix("HTTP/1.1 413"))
                #expect(declared.hasSuffix("request body larger than 1000 bytes\n"))
                let client = try #require(RawClient(port: port))
                defer { client.close() }
                client.send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in 0..<3 { client.send("200\r\n" + String(repeating: "y", count: 512) + "\r\n") }
                let chunked = client.readAll()
                #expect(chunked.hasPrefix("HTTP/1.1 413"), "\(chunked)")
            }
        }

        /// Slow clients (half a header, a body that stops, an idle kept-alive connection) are
        /// closed at their timeout; connections past the limit wait and are served once others
        /// end, and the server answers throughout.
        @Test func slowClientsAreClosedAndTheConnectionLimitHolds() async throws {
            var limits = HTTPLimits()
            limits.maximumConnections = 4
            limits.headerTimeout = 1
            limits.bodyTimeout = 1
            limits.idleTimeout = 1
            try await Self.serving(limits) { port in
                let started = Date()
                var slow: [RawClient] = []
                for index in 0..<12 {
                    guard let client = RawClient(port: port) else { continue }
                    client.send(index % 2 == 0 ? "POST / HTTP/1.1\r\nHost: x\r\nX-Half: " : "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
                    slow.append(client)
                }
                // Past the limit: served after the slow ones are closed, well before the read timeout.
                #expect(Self.post(port, "hello").hasSuffix("\r\n\r\n5\n"))
                for client in slow {
                    #expect(client.readAll() == "")  // closed (EOF) without an answer, not held
                    client.close()
                }
                #expect(Date().timeIntervalSince(started) < 12)
                // A kept-alive connection idle past its timeout is closed after its answer.
                let kept = try #require(RawClient(port: port))
                defer { kept.close() }
                kept.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
                let idleStart = Date()
                let answer = kept.readAll()
                #expect(answer.hasSuffix("\r\n\r\n2\n"))
                #expect(Date().timeIntervalSince(idleStart) < 10)
            }
        }

        /// Concurrent bodies share one buffered-bytes ceiling: eight 48 KiB bodies under a
        /// 64 KiB ceiling wait for each other and all get their answer.
        @Test func bufferedBodiesShareOneCeiling() async throws {
            var limits = HTTPLimits()
            limits.maximumBody = 64 << 10
            limits.maximumBufferedBytes = 64 << 10
            try await Self.serving(limits) { port in
                // Blocking clients on threads of their own (the cooperative pool is the server's).
                let answers = await withCheckedContinuation { (done: CheckedContinuation<[String], Never>) in
                    let results = Mutex<[String]>([])
                    let group = DispatchGroup()
                    for _ in 0..<8 {
                        group.enter()
                        Thread {
                            let answer = Self.post(port, String(repeating: "z", count: 48 << 10))
                            results.withLock { $0.append(answer) }
                            group.leave()
                        }.start()
                    }
                    group.notify(queue: .global()) { done.resume(returning: results.withLock { $0 }) }
                }
                #expect(answers.count == 8)
                for answer in answers { #expect(answer.hasSuffix("\r\n\r\n49152\n"), "\(answer.prefix(200))") }
            }
        }

        /// 50 requests pipelined on one connection are answered in order; 400 concurrent
        /// connections against a limit of 32 are all answered (they wait in the backlog).
        @Test func pipelinedAndManyConcurrentClients() async throws {
            var limits = HTTPLimits()
            limits.maximumConnections = 32
            try await Self.serving(limits) { port in
                let client = try #require(RawClient(port: port))
                defer { client.close() }
                var requests = ""
                for index in 0..<50 {
                    let body = String(repeating: "p", count: index)
                    requests += "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \(index)\r\n\(index == 49 ? "Connection: close\r\n" : "")\r\n" + body
                }
                client.send(requests)
                let answers = client.readAll()
                let bodies = answers.components(separatedBy: "\r\n\r\n").dropFirst().map { $0.split(separator: "\n").first.map(String.init) ?? "" }
                #expect(bodies == (0..<50).map(String.init), "\(bodies.prefix(5))")
                let results = await withCheckedContinuation { (done: CheckedContinuation<[String], Never>) in
                    let collected = Mutex<[String]>([])
                    let group = DispatchGroup()
                    for index in 0..<400 {
                        group.enter()
                        Thread {
                            let answer = Self.post(port, String(repeating: "c", count: index % 7))
                            collected.withLock { $0.append(answer) }
                            group.leave()
                        }.start()
                    }
                    group.notify(queue: .global()) { done.resume(returning: collected.withLock { $0 }) }
                }
                #expect(results.count == 400)
                #expect(results.filter { $0.hasPrefix("HTTP/1.1 200") }.count == 400)
            }
        }

        /// The allowance behind both limits: waits without spinning, wakes in order, and a
        /// cancelled waiter takes nothing.
        @Test func allowanceWaitsAndCancels() async throws {
            let allowance = Allowance(10)
            #expect(await allowance.acquire(8))
            let waiter = Task { await allowance.acquire(5) }
            try await Task.sleep(nanoseconds: 50_000_000)
            waiter.cancel()
            #expect(await waiter.value == false)
            #expect(allowance.available == 2)
            let second = Task { await allowance.acquire(4) }
            try await Task.sleep(nanoseconds: 50_000_000)
            allowance.release(8)
            #expect(await second.value)
            #expect(allowance.available == 6)
        }
    }
}

extension KVMTests {
    /// What requests of one snapshot share, and the bound `RefreshPolicy` puts on it.
    @Suite struct SnapshotRefresh {
        /// Python's hash seed and PRNG state are the same in every request of one snapshot; with
        /// a refresh after 4 requests a fresh boot replaces them, and no request is dropped.
        @Test func refreshedSnapshotsGetFreshRandomState() async throws {
            let code = LinuxFixtures.scratch("refresh")
            try Data("import random, sys\nsys.stdin.read()\nprint(hash('abc'), random.random())\n".utf8)
                .write(to: URL(fileURLWithPath: code + "/seed.py"))
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", code + "/seed.py"]
            configuration.files = [FileGrant(hostPath: code)]
            configuration.memorySize = 128 << 20
            configuration.timeout = 60
            configuration.standardOutput = .capture
            configuration.standardError = .capture
            let fixed = configuration
            let boot: @Sendable () throws -> Snapshot = {
                try Snapshot(elfPath: "/usr/bin/python3", configuration: fixed, readyAt: .firstInputRead)
            }
            let plain = try FunctionServer(snapshot: try boot(), workers: 1, requestTimeout: 10)
            var shared: Set<String> = []
            for _ in 0..<4 { shared.insert(String(decoding: try await plain.handle([]).body, as: UTF8.self)) }
            #expect(shared.count == 1, "one snapshot, one state: \(shared)")
            let refreshing = try FunctionServer(snapshot: try boot(), workers: 1, requestTimeout: 10,
                                                refresh: RefreshPolicy(afterRequests: 4), boot: boot)
            var seen: Set<String> = []
            for _ in 0..<40 {
                let answer = try await refreshing.handle([])
                #expect(answer.status == 200)
                seen.insert(String(decoding: answer.body, as: UTF8.self))
                if refreshing.refreshes >= 2 && seen.count >= 3 { break }
                try await Task.sleep(nanoseconds: 50_000_000)  // let the background boot finish
            }
            #expect(refreshing.refreshes >= 2)
            #expect(seen.count >= 3, "\(seen)")
        }
    }
}

extension KVMTests.SnapshotRefresh {
    /// Socket mode: each worker forks the refreshed snapshot after its connection; every
    /// connection is answered, and fresh boots bring fresh hash seeds.
    @Test func socketModeWorkersMoveToTheRefreshedSnapshot() async throws {
        let code = LinuxFixtures.scratch("refresh-socket")
        let server = SocketPrograms.python.replacingOccurrences(of: "{self.path} count={count} seen={seen}", with: "{hash('abc')}")
        #expect(server.contains("hash('abc')"))
        try Data(server.utf8).write(to: URL(fileURLWithPath: code + "/server.py"))
        let configuration = SocketPrograms.configuration(["/usr/bin/python3", code + "/server.py"], grants: [FileGrant(hostPath: code)])
        let boot: @Sendable () throws -> Snapshot = {
            try Snapshot(elfPath: "/usr/bin/python3", configuration: configuration, readyAt: .firstWait)
        }
        let refreshing = try SocketServer(snapshot: try boot(), workers: 1, connectionTimeout: 10,
                                          refresh: RefreshPolicy(afterRequests: 3), boot: boot)
        let seen = try await SocketPrograms.serving(refreshing) { port in
            var seen: Set<String> = []
            for index in 0..<60 {
                let answer = SocketPrograms.get(port: port, path: "/r\(index)")
                #expect(!answer.isEmpty && !answer.hasPrefix("error"))
                seen.insert(answer)
                if seen.count >= 3 { break }
                try await Task.sleep(nanoseconds: 50_000_000)
            }
            return seen
        }
        #expect(seen.count >= 3, "\(seen)")
    }
}
