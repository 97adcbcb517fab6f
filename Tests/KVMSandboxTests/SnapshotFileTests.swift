import Foundation
import KVMSandbox
import KVMSandboxServer
import Testing

extension KVMTests {
    /// Snapshots on disk: written, loaded (as another process would), forked and served; refused
    /// when truncated, corrupt, of another version, or when a file they depend on changed.
    @Suite struct SnapshotFiles {
        /// A copy of the echo guest in a scratch directory (so the test may change it), and a
        /// snapshot of it at its first read of stdin, written to a file.
        static func echoSnapshot() throws -> (program: String, file: String) {
            let directory = LinuxFixtures.scratch("snapshot-file")
            let program = directory + "/echo.elf"
            try FileManager.default.copyItem(atPath: try Guests.build("echo-stdin"), toPath: program)
            var configuration = SandboxConfiguration()
            configuration.arguments = [program]
            configuration.memorySize = 8 << 20
            configuration.standardOutput = .capture
            configuration.timeout = 10
            let snapshot = try Snapshot(elfPath: program, configuration: configuration, readyAt: .firstInputRead)
            let file = directory + "/echo.snap"
            try snapshot.write(to: file)
            return (program, file)
        }

        /// A loaded snapshot forks into VMs that run exactly as forks of the original: each with
        /// its own input, reset between runs.
        @Test func aWrittenSnapshotLoadsAndForks() throws {
            let (_, file) = try Self.echoSnapshot()
            let loaded = try Snapshot(contentsOf: file)
            #expect(!loaded.waitsForConnections)
            let vm = try loaded.fork()
            for word in ["one", "two"] {
                vm.standardInput = .bytes(Array(word.utf8))
                #expect(try vm.run() == .exited(status: 0))
                #expect(String(decoding: vm.capturedOutput(fd: 1), as: UTF8.self) == word)
                try vm.reset()
            }
        }

        /// A dynamic server (Rust, its libraries mapped): written, loaded, served with a reset
        /// per connection.
        @Test func aServerSnapshotServesAfterLoading() async throws {
            let path = try SocketPrograms.rust()
            let snapshot = try Snapshot(elfPath: path, configuration: SocketPrograms.configuration([path]), readyAt: .connectionWait)
            let file = LinuxFixtures.scratch("snapshot-server") + "/server.snap"
            try snapshot.write(to: file)
            let server = try SocketServer(snapshot: try Snapshot(contentsOf: file), workers: 1, connectionTimeout: 10)
            try await SocketPrograms.serving(server) { port in
                for index in 0..<20 { #expect(SocketPrograms.get(port: port, path: "/l\(index)") == "/l\(index) count=1\n") }
            }
        }

        /// Truncation, a flipped byte, another format version, not a snapshot, a changed program:
        /// each refused with its own error.
        @Test func damagedSnapshotsAndChangedFilesAreRefused() throws {
            let (program, file) = try Self.echoSnapshot()
            let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
            func refusal(_ data: Data) -> SnapshotFileError? {
                let damaged = file + ".damaged"
                try? data.write(to: URL(fileURLWithPath: damaged))
                do { _ = try Snapshot(contentsOf: damaged); return nil } catch { return error }
            }
            #expect(refusal(bytes.prefix(bytes.count - 100)) == .truncated)
            var flipped = bytes
            flipped[bytes.count / 2] ^= 0x40
            #expect(refusal(flipped) == .checksumMismatch)
            var version = bytes
            version[8] = 99
            #expect(refusal(version) == .incompatible("format version 99, this build reads \(Snapshot.fileFormatVersion)"))
            #expect(refusal(Data("#!/bin/sh\necho not a snapshot\n".utf8)) == .notASnapshot)
            #expect(refusal(Data()) == .notASnapshot)
            // The program changes (same size, other bytes): refused, naming it.
            var elf = try Data(contentsOf: URL(fileURLWithPath: program))
            elf[elf.count - 1] ^= 0xff
            try elf.write(to: URL(fileURLWithPath: program))
            #expect(throws: SnapshotFileError.fileChanged(path: program, reason: "its contents differ")) { try Snapshot(contentsOf: file) }
        }

        /// A guest that holds a host file open at its ready point cannot be saved (the file
        /// would not exist in the other process): the error names it.
        @Test func openHostFilesCannotBeSaved() throws {
            let directory = LinuxFixtures.scratch("snapshot-open")
            try Data("kept open\n".utf8).write(to: URL(fileURLWithPath: directory + "/data.txt"))
            var configuration = SandboxConfiguration()
            configuration.arguments = ["/usr/bin/python3", "-c", "import sys\nf = open('\(directory)/data.txt')\nsys.stdin.read()"]
            configuration.files = [FileGrant(hostPath: directory)]
            configuration.memorySize = 128 << 20
            configuration.timeout = 30
            let snapshot = try Snapshot(elfPath: "/usr/bin/python3", configuration: configuration, readyAt: .firstInputRead)
            #expect(throws: SnapshotFileError.openHostFile(path: directory + "/data.txt")) { try snapshot.write(to: directory + "/x.snap") }
        }
    }
}
