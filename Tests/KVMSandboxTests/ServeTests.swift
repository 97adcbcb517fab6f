import Foundation
import KVMSandbox
import KVMSandboxServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

extension KVMTests {
    /// Function mode (`kvmsandbox serve`): an unmodified python3 handler snapshotted at its first
    /// stdin read; every request in a reset fork.
    @Suite struct Serving {
        static let handler = """
        import json, hashlib, re, sys
        counter = []
        request = json.loads(sys.stdin.read())
        counter.append(1)
        if request.get("crash"):
            import ctypes
            ctypes.string_at(0)
        if request.get("loop"):
            while True:
                pass
        if request.get("hog"):
            hog = bytearray(512 << 20)
        if request.get("global"):
            globals()["leak"] = request["global"]
        if request.get("tmp"):
            open("/state/left-behind", "w").write("x")
        import os
        print(json.dumps({"n": request["n"], "square": request["n"] ** 2, "calls": len(counter),
                          "leak": globals().get("leak"), "tmp": os.path.exists("/state/left-behind")}))
        """

        static func server(workers: Int) throws -> FunctionServer {
            let code = LinuxFixtures.scratch("serve")
            try Data(handler.utf8).write(to: URL(fileURLWithPath: code + "/app.py"))
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", code + "/app.py"]
            configuration.files = [FileGrant(hostPath: code)]
            configuration.memoryDirectories = ["/state"]  // (a tmpfs at /tmp would hide the test directory under /tmp)
            configuration.memorySize = 256 << 20
            configuration.timeout = 60
            return try FunctionServer(program: "/usr/bin/python3", configuration: configuration, workers: workers, requestTimeout: 2)
        }

        static func json(_ answer: FunctionServer.Answer) -> [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(answer.body))) as? [String: Any]
        }

        /// 1,000 requests from 8 concurrent clients: every answer right, and none sees a global,
        /// a /tmp file or the call count another request left.
        @Test func aThousandConcurrentRequestsAreIsolated() async throws {
            let server = try Self.server(workers: 4)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<8 {
                    group.addTask {
                        for index in 0..<125 {
                            let n = client * 1000 + index
                            let extra = index % 3 == 0 ? ", \"global\": \"g\(n)\", \"tmp\": 1" : ""
                            let answer = try await server.handle(Array("{\"n\": \(n)\(extra)}".utf8))
                            #expect(answer.status == 200)
                            let object = Self.json(answer)
                            #expect(object?["square"] as? Int == n * n)
                            #expect(object?["calls"] as? Int == 1)
                            #expect((object?["leak"] as? String) == (extra.isEmpty ? nil : "g\(n)"))
                            #expect(object?["tmp"] as? Bool == !extra.isEmpty)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }

        /// A crash, a runaway loop and an allocation past the VM's memory get error statuses;
        /// the next request is served as if nothing happened.
        @Test func failingRequestsGetErrorsAndTheServerGoesOn() async throws {
            let server = try Self.server(workers: 1)
            #expect(try await server.handle(Array("{\"n\": 1, \"crash\": 1}".utf8)).status == 500)
            #expect(try await server.handle(Array("{\"n\": 1, \"loop\": 1}".utf8)).status == 504)
            #expect(try await server.handle(Array("{\"n\": 1, \"hog\": 1}".utf8)).status == 500)
            let answer = try await server.handle(Array("{\"n\": 5}".utf8))
            #expect(answer.status == 200)
            #expect(Self.json(answer)?["square"] as? Int == 25)
        }

        /// Over HTTP: POST the body, get stdout back.
        @Test func overHTTP() async throws {
            let server = try Self.server(workers: 2)
            let port = PortBox()
            let serving = Task { try await server.serve(host: "127.0.0.1", port: 0) { port.set($0) } }
            defer { serving.cancel() }
            var bound = 0
            for _ in 0..<100 where bound == 0 {
                try await Task.sleep(nanoseconds: 20_000_000)
                bound = port.value
            }
            try #require(bound != 0)
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(bound)/")!)
            request.httpMethod = "POST"
            request.httpBody = Data("{\"n\": 12}".utf8)
            request.setValue("client-42", forHTTPHeaderField: "X-Request-Id")
            let (data, response) = try await URLSession.shared.data(for: request)
            let http = try #require(response as? HTTPURLResponse)
            #expect(http.statusCode == 200)
            #expect(http.value(forHTTPHeaderField: "X-Request-Id") == "client-42")
            #expect(((try? JSONSerialization.jsonObject(with: data)) as? [String: Any])?["square"] as? Int == 144)
            // A failed request says why in a header and a one-line body (no addresses, no
            // stderr); an id a client could use to forge log fields is replaced by one of ours.
            request.httpBody = Data("{\"n\": 1, \"crash\": 1}".utf8)
            request.setValue("forged id=1 status=200", forHTTPHeaderField: "X-Request-Id")
            let (failed, failure) = try await URLSession.shared.data(for: request)
            let failedHTTP = try #require(failure as? HTTPURLResponse)
            #expect(failedHTTP.statusCode == 500)
            #expect(failedHTTP.value(forHTTPHeaderField: "X-KVMSandbox-Reason") == "the program crashed (signal 11)")
            #expect(String(decoding: failed, as: UTF8.self) == "the program crashed (signal 11)\n")
            let id = try #require(failedHTTP.value(forHTTPHeaderField: "X-Request-Id"))
            #expect(id.count == 16 && id.allSatisfy(\.isHexDigit))
        }
    }
}

/// A port number handed from the server task to the test.
final class PortBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored = 0
    var value: Int { lock.withLock { stored } }
    func set(_ port: Int) { lock.withLock { stored = port } }
}
