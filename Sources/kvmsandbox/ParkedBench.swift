import KVMSandbox

/// The parked-VM figures of `kvmsandbox bench`: a request (`add(1, 2)`) with its reset and no
/// VM exit, for three arena sizes, beside the pooled request and the exit floor of the same
/// run; the throughput of one parked VM; and a request that writes outside its arena.
struct ParkedBench {
    let snapshot: Snapshot
    let samples: Int

    func run(into results: inout BenchResults, floor: Double, progress: (String) -> Void) throws {
        progress("parked VM: zero-exit requests (16/64/256 KiB arenas), throughput, a write outside the arena")
        for (suffix, arena) in [("_16k", UInt64(16) << 10), ("", 64 << 10), ("_256k", 256 << 10)] {
            let vm = try ParkedSandbox(snapshot: try snapshot.parked(ParkingConfiguration(arenaSize: arena)))
            let add = try vm.function(named: "add")
            for _ in 0..<1000 { _ = try vm.call(add, 1, 2) }
            let exitsBefore = vm.statistics.exits
            let request = try Samples.measure(samples * 100) {
                guard try vm.call(add, 1, 2) == .returned(3) else { throw BenchFailure("parked add(1, 2) did not return 3") }
            }
            results.add("pooled_request_zero_exit\(suffix)_ns", request)

            if suffix.isEmpty {
                results.add("zero_exit_exits_per_request", Double(vm.statistics.exits - exitsBefore) / Double(samples * 100))
                results.add("zero_exit_vs_floor", request.median / floor)
                if let pooled = results["pooled_request_ns"] { results.add("zero_exit_vs_pooled_request", request.median / pooled) }
                // Back-to-back requests for a second: one posting thread, one vCPU thread.
                var count = 0
                let started = monotonicNanoseconds()
                while monotonicNanoseconds() - started < 1_000_000_000 {
                    for _ in 0..<1000 { _ = try vm.call(add, 1, 2) }
                    count += 1000
                }
                results.add("zero_exit_requests_per_second", Double(count) * 1e9 / Double(monotonicNanoseconds() - started))
            }
        }
        // A request that writes one page outside the arena: after its first write fault the
        // page stays writable and is copied back with the arena; with none kept, every such
        // request is a write fault and a slow reset.
        for (key, kept) in [("parked_request_outside_arena_ns", 64), ("parked_request_outside_arena_slow_ns", 0)] {
            let vm = try ParkedSandbox(snapshot: try snapshot.parked(ParkingConfiguration(keptWritablePages: kept)))
            let touch = try vm.function(named: "touch")
            for _ in 0..<10 { _ = try vm.call(touch, 1) }
            results.add(key, try Samples.measure(kept > 0 ? samples * 100 : samples) { _ = try vm.call(touch, 1) })
        }
    }
}

/// A benchmark's guest did not behave.
struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
