import Foundation
import KVMSandbox
import KVMSandboxTools
import Synchronization
import Testing

/// The conformance corpus (`Tests/Conformance/corpus.json`): hostile and ordinary guests with
/// their exact expected outcomes. The same corpus runs inside the emulated SVM machine through
/// `Scripts/conformance`, so both platforms must give the same reports.
enum Conformance {
    static let corpus: ConformanceCorpus = {
        let url = Guests.testsDirectory.deletingLastPathComponent().appendingPathComponent("Conformance/corpus.json")
        do { return try JSONDecoder().decode(ConformanceCorpus.self, from: Data(contentsOf: url)) } catch {
            fatalError("cannot read \(url.path): \(error)")
        }
    }()

    /// Every corpus ELF, compiled once per test process.
    static let elfDirectory: Result<String, GuestBuildFailure> = {
        let directory = Guests.outputDirectory.appendingPathComponent("conformance")
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let toolchain = try GuestToolchain()
            for (elf, build) in corpus.builds {
                try toolchain.compile(build.flags + ["-o", directory.appendingPathComponent(elf).path,
                                                     Guests.repository.appendingPathComponent(build.source).path])
            }
            return .success(directory.path)
        } catch {
            return .failure(GuestBuildFailure(message: "\(error)"))
        }
    }()

    struct GuestBuildFailure: Error { let message: String }
}

extension KVMTests {
    @Suite struct ConformanceCorpusOnThisMachine {
        @Test(arguments: Conformance.corpus.cases)
        func caseBehavesAsSpecified(_ testCase: ConformanceCorpus.Case) throws {
            let directory = try Conformance.elfDirectory.get()
            let failures = try ConformanceRunner.check(testCase, elfDirectory: directory)
            #expect(failures.isEmpty, "\(testCase.name): \(failures.joined(separator: "; "))")
            // The host is unharmed: a normal guest still runs.
            #expect(try Guests.run("args").outcome == .exited(status: 1))
        }

        @Test func theCorpusCoversAtLeastThirtyHostileGuests() {
            let faults = Conformance.corpus.cases.filter { $0.expect.outcome == "fault" }
            #expect(faults.count >= 30)
            #expect(Set(Conformance.corpus.cases.map(\.name)).count == Conformance.corpus.cases.count)
        }
    }
}
