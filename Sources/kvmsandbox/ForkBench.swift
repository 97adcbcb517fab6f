import Foundation
import KVMSandbox
import KVMSandboxTools

/// The snapshot, fork, reset, guest-call and pooled-request figures of `kvmsandbox bench`, each
/// next to the baseline it is judged against, measured in the same run.
struct ForkBench {
    let service: String
    let samples: Int
    let cycles: Int

    /// The `service` guest's configuration with `memory` bytes (also for `bench --parked-only`).
    static func configuration(memory: UInt64) -> SandboxConfiguration {
        var configuration = SandboxConfiguration()
        configuration.arguments = ["service"]
        configuration.memorySize = memory
        configuration.standardOutput = .discard
        return configuration
    }

    func run(into results: inout BenchResults, floor: Double, progress: (String) -> Void) throws {
        let small = try Snapshot(elfPath: service, configuration: Self.configuration(memory: 16 << 20))
        let large = try Snapshot(elfPath: service, configuration: Self.configuration(memory: 1 << 30))

        progress("fork (new VM over a copy-on-write mapping of the snapshot)")
        _ = try small.fork()
        results.add("fork_ns", try Samples.measure(samples) { _ = try small.fork() })
        if let fork = results["fork_ns"], let bare = results["vm_create_floor_ns"] { results.add("fork_vs_vm_create_floor", fork / bare) }
        results.add("fork_first_call_ns", try Samples.measure(samples) { _ = try small.fork().call("add", 1, 2) })

        progress("guest call, reset after dirtying 1/64/1024 pages (16 MiB and 1 GiB), pooled request")
        let vm = try small.fork()
        for _ in 0..<100 { _ = try vm.call("add", 1, 2); try vm.reset() }
        results.add("guest_call_ns", try Samples.measure(samples * 10) { _ = try vm.call("add", 1, 2) })
        try vm.reset()
        for (key, pages, snapshot) in [("reset_1_page_ns", 1, small), ("reset_64_pages_ns", 64, small),
                                       ("reset_1024_pages_ns", 1024, small), ("reset_1_page_1gib_ns", 1, large)] {
            let forked = try snapshot.fork()
            _ = try forked.call("touch", .integer(UInt64(pages)))
            try forked.reset()
            results.add(key, try Samples.measure(samples) {
                _ = try forked.call("touch", .integer(UInt64(pages)))
                try forked.reset()
            })
        }
        if let one = results["reset_1_page_ns"], let big = results["reset_1_page_1gib_ns"] { results.add("reset_1gib_vs_16mib", big / one) }
        // The same with the dirty bitmap instead of the ring, reset alone (the run excluded).
        for (key, snapshot) in [("reset_bitmap_only_1_page_ns", small), ("reset_bitmap_only_1_page_1gib_ns", large)] {
            let forked = try snapshot.fork(tracking: .bitmap)
            results.add(key, median(try (0..<samples).map { _ in
                _ = try forked.call("touch", 1)
                return try timed { try forked.reset() }
            }))
        }
        let pool = try SandboxPool(snapshot: small, capacity: 1, prefork: 1)
        // Requests made from async code, as a server would: take, call, reset, return.
        let count = samples * 10
        let request = Samples(try blockingAsync {
            var times: [Double] = []
            for _ in 0..<count {
                let start = monotonicNanoseconds()
                _ = try await pool.withSandbox { vm in try vm.call("add", 1, 2) }
                times.append(Double(monotonicNanoseconds() - start))
            }
            return times
        })
        results.add("pooled_request_ns", request)
        if let fresh = results["vm_create_ns"] { results.add("vm_create_vs_pooled_request", fresh / request.median) }
        results.add("pooled_request_vs_floor", request.median / floor)
        try ParkedBench(snapshot: small, samples: samples).run(into: &results, floor: floor, progress: progress)

        progress("resident memory per idle fork (100 forks, one call each)")
        let before = ProcessResources.residentBytes
        let forks = try (0..<100).map { _ in
            let vm = try small.fork()
            _ = try vm.call("add", 1, 2)
            return vm
        }
        results.add("rss_per_idle_fork_bytes", Double(ProcessResources.residentBytes - before) / Double(forks.count))
        withExtendedLifetime(forks) {}

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
        let (fds, maps, rss) = (ProcessResources.openFileDescriptors, ProcessResources.mappings, ProcessResources.residentBytes)
        try cycle(cycles)
        results.add("cycles", Double(cycles))
        results.add("cycles_fd_delta", Double(ProcessResources.openFileDescriptors - fds))
        results.add("cycles_mapping_delta", Double(ProcessResources.mappings - maps))
        results.add("cycles_rss_delta_bytes", Double(ProcessResources.residentBytes - rss))
    }
}

/// Runs async `body` to completion from synchronous code (one hop for the whole measurement).
func blockingAsync<R: Sendable>(_ body: @escaping @Sendable () async throws -> R) throws -> R {
    let box = ResultBox<R>()
    let done = DispatchSemaphore(value: 0)
    Task {
        do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
        done.signal()
    }
    done.wait()
    return try box.result!.get()
}

private final class ResultBox<R>: @unchecked Sendable {
    var result: Result<R, Error>?
}
