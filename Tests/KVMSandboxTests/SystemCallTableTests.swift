import Testing
@testable import KVMSandbox

/// The architecture's system-call table: one entry per number and name, and the properties the
/// exitless server, the host budget and the ready points read from it.
@Suite struct SystemCallTableTests {
    let table = LinuxPersonality.systemCalls

    @Test func everyNumberAndNameOnce() {
        let entries = table.all
        #expect(Set(entries.map(\.number)).count == entries.count)
        #expect(Set(entries.map(\.name)).count == entries.count)
        #expect(entries.allSatisfy { (0...6).contains($0.arguments) && !$0.name.isEmpty })
        #expect(entries.allSatisfy { $0.argumentKinds.allSatisfy("xdufpos".contains) })
        #expect(entries.count >= 170)
    }

    @Test func namesAndUnknownNumbers() {
        #expect(table.name(0) == "read")
        #expect(table.name(257) == "openat")
        #expect(table.name(9999) == "syscall_9999")
        #expect(table[-1] == nil && table[1 << 20] == nil)
        #expect(table.argumentCount(9999) == 6)
    }

    /// What may be served off the vCPU thread: never a call that changes the vCPU, blocks or
    /// takes access away (the list `LinuxExitless.swift` documents).
    @Test func exitlessPolicies() {
        for name in ["mprotect", "mremap", "arch_prctl", "clone", "clone3", "rt_sigreturn", "exit", "exit_group",
                     "nanosleep", "clock_nanosleep", "poll", "epoll_wait", "rt_sigprocmask", "kill"] {
            let entry = table.all.first { $0.name == name }
            #expect(entry?.exitless == .never, "\(name)")
        }
        for name in ["read", "write", "sendto", "recvmsg"] {
            #expect(table.all.first { $0.name == name }?.exitless == .whenTransferCannotWait, "\(name)")
        }
        #expect(table.all.filter { $0.transfer == .reads }.map(\.name).sorted() == ["pread64", "read", "readv"])
    }

    /// Calls that make the host hold something are refused once the host budget is spent.
    @Test func hostCosts() {
        let costly = table.all.filter { if case .none = $0.hostCost { return false } else { return true } }.map(\.name)
        #expect(Set(costly) == ["mmap", "pipe", "pipe2", "epoll_create", "epoll_create1", "epoll_ctl", "eventfd", "eventfd2",
                                "timerfd_create", "socket", "socketpair", "clone", "clone3"])
    }
}
