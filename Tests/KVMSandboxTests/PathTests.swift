@testable import KVMSandbox
import Testing

/// Guest path normalization (no KVM): `..` never climbs above `/`, whatever the guest writes.
@Suite struct GuestPaths {
    @Test(arguments: [
        ("/a/b/../c", "/", "/a/c"),
        ("../../../../etc/passwd", "/data", "/etc/passwd"),
        ("x/./y//z/", "/w", "/w/x/y/z"),
        ("..", "/", "/"),
        ("/../..", "/tmp", "/"),
        ("", "/tmp", "/tmp"),
        ("a/../../b", "/c/d", "/c/b"),
    ])
    func normalize(path: String, cwd: String, expected: String) {
        #expect(FileSystemView.normalize(path, cwd: cwd) == expected)
    }

    @Test func parentAndLastComponent() {
        #expect(FileSystemView.parent(of: "/a/b") == "/a")
        #expect(FileSystemView.parent(of: "/a") == "/")
        #expect(FileSystemView.lastComponent(of: "/a/b") == "b")
    }

    /// The in-memory tree keeps its byte budget (contents and names: each entry costs its
    /// path's bytes plus `entryOverhead`) and refuses what Linux refuses.
    @Test func memoryFileSystemLimits() {
        let entry = MemoryFileSystem.charge("/tmp/a")  // 6 + 64
        let tree = MemoryFileSystem(mounts: ["/tmp"], capacity: entry + 10)
        #expect(tree.createFile("/tmp/a", exclusive: false, truncate: false) == nil)
        #expect(tree.createFile("/tmp/a", exclusive: true, truncate: false) == .fileExists)
        #expect(tree.createFile("/tmp/none/a", exclusive: false, truncate: false) == .noSuchFileOrDirectory)
        #expect(tree.write("/tmp/a", Array("0123456789".utf8), at: 0) == .success(10))
        #expect(tree.write("/tmp/a", [1], at: 10) == .failure(.noSpace))
        #expect(tree.write("/tmp/a", [1], at: UInt64.max) == .failure(.fileTooLarge))
        #expect(tree.makeDirectory("/tmp/d") == .noSpace)  // its name does not fit
        #expect(tree.used == entry + 10 && tree.isConsistent)
        let roomy = MemoryFileSystem(mounts: ["/tmp"], capacity: 1000)
        #expect(roomy.createFile("/tmp/a", exclusive: false, truncate: false) == nil)
        #expect(roomy.makeDirectory("/tmp/d") == nil)
        #expect(roomy.rename("/tmp/a", to: "/tmp/d/b") == nil)
        #expect(roomy.used == MemoryFileSystem.charge("/tmp/d") + MemoryFileSystem.charge("/tmp/d/b") && roomy.isConsistent)
        #expect(roomy.rename("/tmp/d/b", to: "/tmp/d/b") == nil)
        #expect(roomy.remove("/tmp/d", directory: true) == .directoryNotEmpty)
        #expect(roomy.remove("/tmp/d/b", directory: false) == nil)
        #expect(roomy.remove("/tmp/d", directory: true) == nil)
        #expect(roomy.used == 0)
        #expect(roomy.remove("/tmp", directory: true) == .resourceBusy)
        #expect(roomy.rename("/tmp", to: "/x") == .resourceBusy)
    }
}
