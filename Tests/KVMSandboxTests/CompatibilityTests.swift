import Foundation
@testable import KVMSandbox
import Testing

extension KVMTests {
    /// Calls real programs make that the Linux layer once refused (`ENOSYS`) or answered
    /// wrongly (the compatibility issue); `Tests/Guests/compat-calls.c` with musl and glibc.
    @Suite struct Compatibility {
        @Test(arguments: ["musl", "glibc"])
        func smallCallsAnswerAsLinux(libc: String) throws {
            let root = LinuxFixtures.scratch("compat-\(libc)")
            let rw = root + "/rw", ro = root + "/ro"
            for directory in [rw, ro] { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
            FileManager.default.createFile(atPath: ro + "/r", contents: Data("r".utf8))
            let program = libc == "musl" ? try Guests.build("compat-calls")
                                         : try ThreadPrograms.c("compat-calls")
            let (outcome, stdout, stderr) = try LinuxFixtures.run(program, ["compat", rw, ro],
                                                                   grants: [FileGrant(hostPath: rw, writable: true), FileGrant(hostPath: ro)])
            #expect(outcome == .exited(status: 0), "\(stderr)")
            #expect(stdout == """
                creat=0 chmod=0 mode=755 fchmod=0 fmode=640 ro=EROFS
                utimensat=0 mtime=1234567890 ftruncate=0 size=10000 truncate=0 size=3 fallocate=0 ro-truncate=EROFS
                chown-same=0 chown-keep=0 chown-other=EPERM
                fchdir=0 relative=0 opath=0 read=EBADF fstat-opath=0 statfs=0 bsize=4096 fstatfs=0
                cpu=ran thread=ran rusage=ran times=ran mlock=0
                null=chr rdev=1:3 stdout-differs=1 pipes-differ=1

                """)
            var status = stat()
            #expect(stat(rw + "/f", &status) == 0 && status.st_mode & 0o7777 == 0o640 && status.st_size == 8192)
        }
    }
}
