import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxTools

/// `kvmsandbox conformance`: build the conformance corpus, or run it on this machine's KVM.
struct ConformanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conformance",
        abstract: "Build or run the conformance corpus (the same guests and expected reports on every platform).",
        subcommands: [Build.self, RunCorpus.self])

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Compile the corpus guests into DIRECTORY and copy the corpus there (needs musl-gcc).")

        @Option(help: "The repository (where corpus sources live).")
        var repository = "."

        @Argument(help: "Where to put the ELFs and corpus.json.")
        var directory: String

        func run() throws {
            let corpusURL = URL(fileURLWithPath: repository).appendingPathComponent("Tests/Conformance/corpus.json")
            let corpus = try JSONDecoder().decode(ConformanceCorpus.self, from: Data(contentsOf: corpusURL))
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let toolchain = try GuestToolchain()
            for (elf, build) in corpus.builds.sorted(by: { $0.key < $1.key }) {
                try toolchain.compile(build.flags + ["-o", directory + "/" + elf,
                                                     URL(fileURLWithPath: repository).appendingPathComponent(build.source).path])
            }
            try Data(contentsOf: corpusURL).write(to: URL(fileURLWithPath: directory + "/corpus.json"))
            print("conformance: \(corpus.builds.count) guests and \(corpus.cases.count) cases in \(directory)")
        }
    }

    struct RunCorpus: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "run",
            abstract: "Run every case of DIRECTORY/corpus.json on this machine's /dev/kvm; exit 1 if any fails.")

        @Argument(help: "A directory made by `conformance build`.")
        var directory: String

        func run() throws {
            let corpus = try JSONDecoder().decode(
                ConformanceCorpus.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/corpus.json")))
            let system = try KVMSystem.shared()
            var failed = 0
            for testCase in corpus.cases {
                let failures: [String]
                do { failures = try ConformanceRunner.check(testCase, elfDirectory: directory, system: system) } catch {
                    failures = ["sandbox error: \(error)"]
                }
                if failures.isEmpty {
                    print("PASS \(testCase.name)")
                } else {
                    failed += 1
                    print("FAIL \(testCase.name): \(failures.joined(separator: "; "))")
                }
            }
            print("conformance: \(corpus.cases.count - failed) passed, \(failed) failed on \(system.platform.rawValue)")
            if failed > 0 { throw ExitCode(1) }
        }
    }
}
