import Foundation
@testable import KVMSandbox
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension KVMTests {
    /// Snapshot files as hostile input (security round 3): keyed files, safe writes, and a
    /// policy the server may narrow but never widen.
    @Suite struct SnapshotTrust {
        /// The echo guest snapshotted with two grants (one read-only, one writable), in a scratch
        /// directory with a `secret` directory beside them.
        static func grantedSnapshot() throws -> (snapshot: Snapshot, directory: String) {
            let directory = LinuxFixtures.scratch("snapshot-trust")
            for name in ["ro/sub", "rw", "secret"] {
                try FileManager.default.createDirectory(atPath: directory + "/" + name, withIntermediateDirectories: true)
            }
            try FileManager.default.createSymbolicLink(atPath: directory + "/ro/escape", withDestinationPath: directory + "/secret")
            var configuration = SandboxConfiguration()
            configuration.arguments = ["echo"]
            configuration.memorySize = 8 << 20
            configuration.standardOutput = .capture
            configuration.timeout = 10
            configuration.files = [FileGrant(hostPath: directory + "/ro"), FileGrant(hostPath: directory + "/rw", writable: true)]
            configuration.allowedConnections = ["127.0.0.1:5432"]
            let snapshot = try Snapshot(elfPath: try Guests.build("echo-stdin"), configuration: configuration, readyAt: .firstInputRead)
            return (snapshot, directory)
        }

        static let key = try! SnapshotKey(bytes: Array(repeating: 0x5a, count: 32))

        /// A keyed file loads with its key; a wrong key, no key, a key for an unkeyed file and
        /// a header edited after signing (a read-only grant made read-write) are each refused as
        /// unauthenticated, before the header is believed.
        @Test func keyedFilesVerifyTheirTag() throws {
            let (snapshot, directory) = try Self.grantedSnapshot()
            let keyed = directory + "/keyed.snap", plain = directory + "/plain.snap"
            try snapshot.write(to: keyed, key: Self.key)
            try snapshot.write(to: plain)
            let loaded = try Snapshot(contentsOf: keyed, key: Self.key)
            #expect(loaded.configuration.files == snapshot.configuration.files)
            let other = try SnapshotKey(bytes: Array(repeating: 0x5b, count: 32))
            func refusal(_ path: String, _ key: SnapshotKey?) -> SnapshotFileError? {
                do { _ = try Snapshot(contentsOf: path, key: key); return nil } catch { return error }
            }
            #expect(refusal(keyed, other) == .unauthenticated("its tag does not verify with the key"))
            #expect(refusal(keyed, nil) == .unauthenticated("the file is keyed; give the key it was written with"))
            #expect(refusal(plain, Self.key) == .unauthenticated("the file carries no tag, and a key was given"))
            // The attack: the header's read-only grant becomes read-write (same length, valid JSON).
            var bytes = try Data(contentsOf: URL(fileURLWithPath: keyed))
            let range = try #require(bytes.range(of: Data("\"writable\":false".utf8)))
            bytes.replaceSubrange(range, with: Data("\"writable\":true ".utf8))
            let edited = directory + "/edited.snap"
            try bytes.write(to: URL(fileURLWithPath: edited))
            #expect(refusal(edited, Self.key) == .unauthenticated("its tag does not verify with the key"))
            #expect(throws: SnapshotFileError.self) { try SnapshotKey(bytes: [1, 2, 3]) }
        }

        /// Snapshot files are written 0600 through a fresh temporary file renamed over the
        /// target: a link planted at the target is replaced, its destination untouched.
        @Test func writesNeverFollowAPlantedLink() throws {
            let (snapshot, directory) = try Self.grantedSnapshot()
            let victim = directory + "/secret/victim"
            try Data("precious".utf8).write(to: URL(fileURLWithPath: victim))
            let target = directory + "/rw/out.snap"
            try FileManager.default.createSymbolicLink(atPath: target, withDestinationPath: victim)
            try snapshot.write(to: target)
            #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
            var status = stat()
            #expect(lstat(target, &status) == 0)
            #expect(status.st_mode & S_IFMT == S_IFREG)
            #expect(status.st_mode & 0o777 == 0o600)
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory + "/rw").filter { $0.contains(".partial-") }
            #expect(leftovers.isEmpty)
        }

        /// A snapshot's policy may be narrowed (a part of a grant, read-only instead of
        /// read-write, fewer destinations) and never widened (another directory, a link inside a
        /// grant that leads out of it, read-write where it was read-only, another destination).
        @Test func policyNarrowsNeverWidens() throws {
            let (snapshot, directory) = try Self.grantedSnapshot()
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: directory + "/ro/sub")) == nil)
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: directory + "/rw")) == nil)
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: directory + "/rw", writable: true)) == nil)
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: directory + "/ro", writable: true)) != nil)
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: directory + "/secret")) != nil)
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: directory + "/ro/escape")) != nil)
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: directory + "/ro/sub", guestPath: "/elsewhere")) != nil)
            #expect(snapshot.policyRefusal(for: FileGrant(hostPath: "/")) != nil)
            #expect(throws: SnapshotPolicyError.self) { try snapshot.narrowed(allowedConnections: ["10.0.0.1:22"]) }
            let narrowed = try snapshot.narrowed(files: [FileGrant(hostPath: directory + "/ro/sub")], allowedConnections: [])
            #expect(narrowed.configuration.files == [FileGrant(hostPath: directory + "/ro/sub")])
            #expect(narrowed.configuration.allowedConnections.isEmpty)
            #expect(narrowed.fileSystem.locate(directory + "/rw/x") == nil)
            #expect(narrowed.fileSystem.locate(directory + "/ro/sub/x") != nil)
            // Its forks run as the original's do.
            let vm = try narrowed.fork()
            vm.standardInput = .bytes(Array("narrow".utf8))
            #expect(try vm.run() == .exited(status: 0))
            #expect(String(decoding: vm.capturedOutput(fd: 1), as: UTF8.self) == "narrow")
        }
    }
}
