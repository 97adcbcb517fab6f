import Foundation
import KVMSandbox
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The CLI run as a process, from the build the tests use.
enum CLI {
    static var path: String { Guests.repository.appendingPathComponent(".build/debug/kvmsandbox").path }

    /// Runs the CLI with `arguments`; its status and what it printed (stdout and stderr together).
    static func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try #require(FileManager.default.isExecutableFile(atPath: path), "build the CLI first (swift build)")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

extension KVMTests {
    /// The CLI as people use it (the CLI issue's "Broken" items this session reached).
    @Suite struct CommandLine {
        /// `serve --help`, `snapshot -o f --help` and `cc --help` show this tool's help (they
        /// once booted a program named `--help`, or printed gcc's); an unknown option before
        /// `--` is a usage error (64); `--version` says the version and the snapshot format.
        @Test func helpUnknownOptionsAndVersion() throws {
            for arguments in [["serve", "--help"], ["serve", "-h"], ["snapshot", "-o", "f", "--help"], ["cc", "--help"]] {
                let (status, output) = try CLI.run(arguments)
                #expect(status == 0 && output.contains("OVERVIEW"), "\(arguments): \(status) \(output.prefix(200))")
            }
            let (status, output) = try CLI.run(["serve", "--bogus", "--", "/usr/bin/python3", "x"])
            #expect(status == 64 && output.contains("unknown option --bogus"))
            let version = try CLI.run(["--version"])
            #expect(version.status == 0 && version.output.contains("snapshot format \(Snapshot.fileFormatVersion)"))
        }

        /// A busy port is reported before the program boots, in one plain line (status 125).
        @Test func aBusyPortIsFoundBeforeBooting() throws {
            let (listener, port) = try #require(SocketPrograms.localListener())
            defer { close(listener) }
            let started = Date()
            let (status, output) = try CLI.run(["serve", "--listen", "127.0.0.1:\(port)", "--", "/usr/bin/python3", "-c", "import time; time.sleep(30)"])
            #expect(status == ExitStatus.sandboxError)
            #expect(output.contains("cannot listen on 127.0.0.1:\(port): the address is already in use"))
            #expect(Date().timeIntervalSince(started) < 10)
        }
    }
}
