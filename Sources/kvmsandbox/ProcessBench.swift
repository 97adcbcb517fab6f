import ArgumentParser
import Foundation
import KVMSandbox
import KVMSandboxTools

/// Processes in `kvmsandbox bench`: fork + exit + wait, posix_spawn + exec + wait of a static
/// program, a semaphore round trip between two processes through shared memory, and
/// `bash -c 'true | true'`, each beside the same thing natively in the same run,
/// with the VM exits each costs (a count that does not depend on the machine's load).
enum ProcessBench {
    /// The guest: `fork N` (fork, the child `_exit(0)`, `waitpid`), `spawn N` (posix_spawn of
    /// itself with `exit`, then `waitpid`), `pingpong N` (N round trips with a forked child
    /// through two process-shared semaphores), `exit`. Static glibc, so the same binary runs both ways.
    static let source = #"""
    #include <semaphore.h>
    #include <spawn.h>
    #include <stdlib.h>
    #include <sys/mman.h>
    #include <string.h>
    #include <sys/wait.h>
    #include <unistd.h>
    extern char **environ;
    int main(int argc, char **argv) {
        if (argc < 2 || !strcmp(argv[1], "exit")) return 0;
        long rounds = argc > 2 ? atol(argv[2]) : 0;
        if (!strcmp(argv[1], "pingpong")) {
            sem_t *s = mmap(0, 2 * sizeof(sem_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
            if (s == MAP_FAILED || sem_init(&s[0], 1, 0) || sem_init(&s[1], 1, 0)) return 3;
            pid_t pid = fork();
            if (pid == 0) { for (long i = 0; i < rounds; i++) { sem_wait(&s[0]); sem_post(&s[1]); } _exit(0); }
            for (long i = 0; i < rounds; i++) { sem_post(&s[0]); sem_wait(&s[1]); }
            int status;
            return pid < 0 || waitpid(pid, &status, 0) != pid || status != 0 ? 2 : 0;
        }
        for (long i = 0; i < rounds; i++) {
            pid_t pid;
            int status;
            if (!strcmp(argv[1], "fork")) {
                pid = fork();
                if (pid == 0) _exit(0);
            } else {
                char *child[] = {argv[0], "exit", 0};
                if (posix_spawn(&pid, argv[0], 0, 0, child, environ) != 0) return 1;
            }
            if (pid < 0 || waitpid(pid, &status, 0) != pid || status != 0) return 2;
        }
        return 0;
    }
    """#

    static func run(into results: inout BenchResults, work: URL, rounds: Int, batches: Int) throws {
        guard let binary = try staticBenchProgram("process-bench", source: source, work: work, results: &results, skipKey: "process_fork_ns") else { return }
        /// One run in the sandbox: its wall time and the exits of all its processes.
        func sandboxed(_ program: String, _ arguments: [String]) throws -> (nanoseconds: Double, exits: Int) {
            var configuration = SandboxConfiguration()
            configuration.arguments = [program] + arguments
            configuration.standardOutput = .discard
            configuration.environment = ["PATH=/usr/bin:/bin"]
            configuration.files = [FileGrant(hostPath: work.path)]  // the program spawns itself
            let sandbox = try Sandbox(elfPath: program, configuration: configuration)
            let start = monotonicNanoseconds()
            let outcome = try sandbox.run()
            guard outcome == .exited(status: 0) else { throw ValidationError("\(program) \(arguments.joined(separator: " ")): \(outcome)") }
            return (Double(monotonicNanoseconds() - start), sandbox.processStatistics.exits)
        }
        // pingpong: a round trip between two processes through process-shared semaphores in
        // MAP_SHARED memory (a futex wake and wait each way, across VMs).
        for (mode, key) in [("fork", "process_fork"), ("spawn", "process_spawn_exec"), ("pingpong", "process_shared_pingpong")] {
            var exits = 0
            let inSandbox = median(try (0..<batches).map { _ in
                let many = try sandboxed(binary, [mode, "\(rounds)"]), none = try sandboxed(binary, [mode, "0"])
                exits = (many.exits - none.exits) / rounds
                return (many.nanoseconds - none.nanoseconds) / Double(rounds)
            })
            let natively = median(try (0..<batches).map { _ in
                (try timed { try spawnAndWait(binary, [mode, "\(rounds * 4)"]) } - timed { try spawnAndWait(binary, [mode, "0"]) }) / Double(rounds * 4)
            })
            results.add("\(key)_ns", inSandbox)
            results.add("native_\(key)_ns", natively)
            results.add("\(key)_vs_native", inSandbox / natively)
            results.add("\(key)_exits", Double(exits))
        }
        // A whole shell pipeline run: start-up, two forks, their end, the waits.
        let bash = "/bin/bash"
        guard FileManager.default.isExecutableFile(atPath: bash) else { results.skip("bash_pipeline_ns", "no /bin/bash"); return }
        var exits = 0
        let pipeline = median(try (0..<batches).map { _ in
            let run = try sandboxed(bash, ["-c", "true | true"])
            exits = run.exits
            return run.nanoseconds
        })
        let native = median(try (0..<batches).map { _ in try timed { try spawnAndWait(bash, ["-c", "true | true"]) } })
        results.add("bash_pipeline_ns", pipeline)
        results.add("native_bash_pipeline_ns", native)
        results.add("bash_pipeline_vs_native", pipeline / native)
        results.add("bash_pipeline_exits", Double(exits))
    }
}
