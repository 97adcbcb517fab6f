import Foundation
import KVMSandbox

/// The snapshot, fork, reset and pooled-request figures of `kvmsandbox bench`, each next to the
/// baseline it is judged against, measured in the same run.
struct ForkBench {
    let service: String
    let batches: Int
    let cycles: Int

    private func configuration(memory: UInt64) -> SandboxConfiguration {
        var configuration = SandboxConfiguration()
        configuration.arguments = ["service"]
        configuration.memorySize = memory
        configuration.standardOutput = .discard
        return configuration
    }

    func run(progress: (String) -> Void) throws -> [(String, Double)] {
        var results: [(String, Double)] = []
        let small = try Snapshot(elfPath: service, configuration: configuration(memory: 16 << 20))
        let large = try Snapshot(elfPath: service, configuration: configuration(memory: 1 << 30))

        progress("bare KVM_CREATE_VM + KVM_CREATE_VCPU vs fork")
        _ = try BareVM.create()
        let bare = median(try (0..<batches * 5).map { _ in try BareVM.create() })
        let fork = median(try (0..<batches * 5).map { _ in
            try timed { _ = try small.fork() }
        })
        let forkAndCall = median(try (0..<batches * 5).map { _ in
            try timed { _ = try small.fork().call("add", 1, 2) }
        })
        results += [("bare_vm_create_ns", bare), ("fork_ns", fork), ("fork_vs_bare_vm", fork / bare),
                    ("fork_first_call_ns", forkAndCall)]

        progress("fresh VM to ready vs pooled request (call + reset)")
        let fresh = median(try (0..<batches * 3).map { _ in
            try timed { _ = try Snapshot.readyTime(service, configuration(memory: 16 << 20)) }
        })
        let vm = try small.fork()
        for _ in 0..<100 { _ = try vm.call("add", 1, 2); try vm.reset() }
        let request = median(try (0..<batches).map { _ in
            try timed(per: 1000) { for _ in 0..<1000 { _ = try vm.call("add", 1, 2); try vm.reset() } }
        })
        let floor = try ExitFloor()
        _ = try floor.measure(count: 1000)
        let out = median(try (0..<batches).map { _ in try floor.measure(count: 2000) })
        results += [("fresh_vm_to_ready_ns", fresh), ("pooled_request_ns", request),
                    ("fresh_vs_pooled", fresh / request), ("floor_out_ns", out), ("pooled_request_vs_floor", request / out)]

        progress("reset cost by dirty pages, 16 MiB vs 1 GiB guest, dirty bitmap vs dirty ring")
        for tracking in DirtyTracking.allCases {
            for (name, snapshot) in [("16m", small), ("1g", large)] {
                let vm = try snapshot.fork(tracking: tracking)
                for pages in [1, 64, 1024] {
                    _ = try vm.call("touch", .integer(UInt64(pages)))
                    try vm.reset()
                    let resetNs = median(try (0..<batches * 3).map { _ in
                        _ = try vm.call("touch", .integer(UInt64(pages)))
                        return try timed { try vm.reset() }
                    })
                    results.append(("reset_\(tracking.rawValue)_\(pages)p_\(name)_ns", resetNs))
                }
            }
            func result(_ key: String) -> Double { results.first { $0.0 == key }!.1 }
            let one16 = result("reset_\(tracking.rawValue)_1p_16m_ns"), one1g = result("reset_\(tracking.rawValue)_1p_1g_ns")
            let many = result("reset_\(tracking.rawValue)_1024p_16m_ns")
            results += [("reset_\(tracking.rawValue)_1g_vs_16m", one1g / one16),
                        ("reset_\(tracking.rawValue)_per_page_ns", (many - one16) / 1023)]
        }

        progress("resident memory per idle fork (100 forks, one call each)")
        let before = ProcessMemory.residentBytes
        let forks = try (0..<100).map { _ in
            let vm = try small.fork()
            _ = try vm.call("add", 1, 2)
            return vm
        }
        let perFork = Double(ProcessMemory.residentBytes - before) / Double(forks.count)
        results.append(("rss_per_idle_fork_bytes", perFork))

        progress("\(cycles) fork/reset cycles: resources before and after")
        func cycle(_ count: Int) throws {
            var vm = try small.fork()
            for index in 0..<count {
                if index % 10 == 9 { vm = try small.fork() }
                _ = try vm.call("touch", 4)
                try vm.reset()
            }
        }
        try cycle(100)
        let (fds, maps, rss) = (ProcessMemory.openFileDescriptors, ProcessMemory.mappings, ProcessMemory.residentBytes)
        try cycle(cycles)
        results += [("cycles", Double(cycles)),
                    ("cycles_fd_delta", Double(ProcessMemory.openFileDescriptors - fds)),
                    ("cycles_mapping_delta", Double(ProcessMemory.mappings - maps)),
                    ("cycles_rss_delta_bytes", Double(ProcessMemory.residentBytes - rss))]
        withExtendedLifetime(forks) {}
        return results
    }

    private func timed(_ body: () throws -> Void) throws -> Double {
        let start = monotonicNanoseconds()
        try body()
        return Double(monotonicNanoseconds() - start)
    }

    private func timed(per count: Int, _ body: () throws -> Void) throws -> Double {
        try timed(body) / Double(count)
    }
}

extension Snapshot {
    /// Creates a VM, loads the ELF and runs its initialization to `ks_ready()`: what a request
    /// costs without snapshots.
    static func readyTime(_ path: String, _ configuration: SandboxConfiguration) throws {
        let sandbox = try Sandbox(elfPath: path, configuration: configuration)
        guard try sandbox.runUntilReady() == .ready else { throw SandboxError.notPaused }
    }
}

/// This process's resources, from /proc.
enum ProcessMemory {
    static var residentBytes: Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
    }
    static var openFileDescriptors: Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1 }
    static var mappings: Int {
        ((try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? "").split(separator: "\n").count
    }
}

func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
