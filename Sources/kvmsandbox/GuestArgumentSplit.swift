import Synchronization

/// Takes the guest's arguments and `--env` values off `kvmsandbox run`'s command line before
/// swift-argument-parser sees it: the parser's cost grows with the square of the argument count
/// (20,000 guest arguments took 9 s, 100,000 took 254 s), while this split is linear. The parser
/// then sees the options and the program only; `Run` adds the split-off parts back.
enum GuestArgumentSplit {
    /// What was taken off the command line.
    struct Parts: Sendable {
        /// Arguments after the program, for the guest.
        var guestArguments: [String] = []
        /// `--env` values, in order.
        var environment: [String] = []
    }

    private static let taken = Mutex(Parts())

    /// The parts taken off by the last `split` (empty when the command was not `run`).
    static var parts: Parts { taken.withLock { $0 } }

    /// `run` options that take no value; every other option takes one (`--name value` or
    /// `--name=value`). Kept in step with `Run`'s `@Flag`s by the test
    /// `everyFlagOfRunIsKnownToTheArgumentSplit`, which reads `run --help`.
    static let flags: Set<String> = [
        "--verbose", "--trace-syscalls", "--allow-jit", "--no-system-libraries", "--no-system-view", "--no-aslr",
        "--allow-exec-writable", "--no-default-tmpfs", "--no-vdso", "--quiet", "-h", "--help",
    ]

    /// Returns `arguments` (without the executable's name) with the guest's arguments and the
    /// `--env` values removed when the subcommand is `run`; records what it removed.
    static func split(_ arguments: [String]) -> [String] {
        guard arguments.first == "run" else { return arguments }
        var kept = ["run"]
        var parts = Parts()
        var index = 1
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" {
                // The program follows the terminator.
                if index + 1 < arguments.count { kept.append(arguments[index + 1]) }
                parts.guestArguments = Array(arguments.dropFirst(index + 2))
                break
            }
            if argument == "--env", index + 1 < arguments.count {
                parts.environment.append(arguments[index + 1])
                index += 2
                continue
            }
            if argument.hasPrefix("--env=") {
                parts.environment.append(String(argument.dropFirst(6)))
                index += 1
                continue
            }
            if argument.hasPrefix("-"), argument.count > 1 {
                kept.append(argument)
                if !flags.contains(argument), !argument.contains("="), index + 1 < arguments.count {
                    kept.append(arguments[index + 1])
                    index += 1
                }
                index += 1
                continue
            }
            // The program: everything after it belongs to the guest.
            kept.append(argument)
            parts.guestArguments = Array(arguments.dropFirst(index + 1))
            break
        }
        let result = parts
        taken.withLock { $0 = result }
        return kept
    }
}
