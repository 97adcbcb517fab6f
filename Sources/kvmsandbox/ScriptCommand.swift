import Foundation
import KVMSandbox
#if canImport(Glibc)
import Glibc
#endif

/// A `#!` script run as the kernel's `execve` runs one: the interpreter named on its first
/// line, with that line's optional argument (the rest of the line, as one argument), then the
/// script's path, then the script's own arguments; an interpreter that is itself a script is
/// followed the same way, at most `nestingLimit` levels deep (then ELOOP, as Linux).
///
/// One step is the CLI's own: `#!/usr/bin/env NAME` looks NAME up in PATH here, as `env` would,
/// because the guest cannot run `env`'s `execve` yet.
enum ScriptCommand {
    /// Linux's limit on nested interpreters (`BINPRM_MAX_RECURSION` is 4).
    static let nestingLimit = ScriptLine.nestingLimit

    /// The ELF to load and its argv for running `path` with `argv` (argv[0] first); unchanged
    /// for anything but a script. The scripts on the way are listed, for read-only grants.
    static func resolve(_ path: String, argv: [String]) -> Result<(program: String, argv: [String], scripts: [String]), Run.ProgramProblem> {
        // The script is named by its absolute path (the guest's working directory need not
        // be this one, so `./x.py` could name nothing there).
        var (program, arguments, scripts) = (URL(fileURLWithPath: path).standardized.path, argv, [String]())
        guard shebang(program) != nil else { return .success((path, argv, [])) }
        while let line = shebang(program) {
            guard scripts.count < nestingLimit else {
                return .failure(Run.ProgramProblem(message: "\(path): too many levels of #! interpreters (Linux's limit is \(nestingLimit))", status: ExitStatus.notExecutable))
            }
            scripts.append(program)
            var interpreter = line.interpreter
            var optional = line.argument
            if interpreter == "/usr/bin/env" || interpreter == "/bin/env", let name = optional, !name.hasPrefix("-"), !name.contains(" ") {
                guard case .success(let found) = Run.resolve(name) else {
                    return .failure(Run.ProgramProblem(message: "\(program): its interpreter \(name) (#!\(line.interpreter) \(name)) is not in PATH", status: ExitStatus.notFound))
                }
                (interpreter, optional) = (found, nil)
            }
            guard interpreter.hasPrefix("/") else {
                return .failure(Run.ProgramProblem(message: "\(program): its #! interpreter \(interpreter) is not an absolute path", status: ExitStatus.notExecutable))
            }
            // The kernel's argv: interpreter, its optional argument, the script as it was named, the rest.
            arguments = [interpreter] + (optional.map { [$0] } ?? []) + [program] + arguments.dropFirst()
            program = interpreter
        }
        return .success((program, arguments, scripts))
    }

    /// The interpreter and optional argument of a `#!` first line (at most 256 bytes, as Linux
    /// reads), or nil for anything else (a file that cannot be read, an ELF).
    static func shebang(_ path: String) -> (interpreter: String, argument: String?)? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 256)
        let n = head.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0, let line = ScriptLine(head.prefix(n)) else { return nil }
        return (line.interpreter, line.argument)
    }
}
