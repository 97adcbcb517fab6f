#if canImport(Glibc)
import Glibc
#endif

/// A program to run, found as a shell and the kernel would find it: a name without a slash is
/// looked up in a search path (regular files with an execute bit), a path is taken as given
/// (made absolute: the guest sees files at their host paths), and a `#!` script runs its
/// interpreter as `execve` does (the interpreter, the line's optional argument, the script, the
/// rest; nested interpreters up to Linux's limit, then an error).
///
/// ```swift
/// let python = try Program.lookup("python3", arguments: ["-c", "print(42)"])
/// let sandbox = try Sandbox(python, configuration: configuration)
/// ```
///
/// `#!/usr/bin/env NAME` looks NAME up in the same search path, as `env` would.
public struct Program: Sendable, Equatable {
    /// The ELF the host loads: the program, or for a script its (last) interpreter.
    public let executable: String
    /// argv, argv[0] first, as the guest gets it.
    public let arguments: [String]
    /// The scripts on the way to `executable`: the guest must be able to read them (`apply(to:)`
    /// grants them read-only).
    public let scripts: [String]

    /// Why a program cannot be started, with the status a shell gives it: 127 not found, 126
    /// found but not something that can be executed.
    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        /// What is wrong, naming the path ("x: not found in PATH (searched /usr/bin:/bin)").
        public let message: String
        /// `ExitStatus.notFound` (127) or `ExitStatus.notExecutable` (126).
        public let status: Int32
        /// The message.
        public var description: String { message }
    }

    /// The search path used when none is given.
    public static let defaultSearchPath = "/usr/local/bin:/usr/bin:/bin"

    /// `name` with `arguments`: looked up in `searchPath` (PATH's syntax) when it has no slash,
    /// else the file at that path (relative to the host's working directory); a script is
    /// resolved to its interpreter. Nothing is read from this process's environment: pass
    /// `ProcessInfo.processInfo.environment["PATH"]` to search the caller's PATH.
    public static func lookup(_ name: String, arguments: [String] = [], searchPath: String? = nil) throws(Problem) -> Program {
        let searchPath = searchPath ?? defaultSearchPath
        let executable = try find(name, searchPath: searchPath)
        return try followingScripts(executable, argv: [name.contains("/") ? name : executable] + arguments, searchPath: searchPath)
    }

    /// Sets `configuration`'s program path and arguments to this program's and grants its
    /// scripts read-only.
    public func apply(to configuration: inout SandboxConfiguration) {
        configuration.programPath = executable
        configuration.arguments = arguments
        configuration.files += scripts.map { FileGrant(hostPath: $0) }
    }

    /// `program` as an absolute path (see `lookup`).
    static func find(_ program: String, searchPath: String) throws(Problem) -> String {
        func absolute(_ path: String) -> String { Program.absolute(path) }
        func isExecutableFile(_ candidate: String) -> Bool {
            var status = stat()
            return stat(candidate, &status) == 0 && status.st_mode & S_IFMT == S_IFREG && access(candidate, X_OK) == 0
        }
        guard !program.isEmpty else { throw Problem(message: "no program named", status: ExitStatus.notFound) }
        guard !program.contains("/") else {
            let file = absolute(program)
            var status = stat()
            guard stat(file, &status) == 0 else {
                let error = errno
                throw Problem(message: "\(file): \(error == ENOENT ? "no such file" : String(cString: strerror(error)))", status: ExitStatus.notFound)
            }
            if status.st_mode & S_IFMT == S_IFDIR { throw Problem(message: "\(file) is a directory", status: ExitStatus.notExecutable) }
            guard status.st_mode & S_IFMT == S_IFREG else { throw Problem(message: "\(file) is not a regular file", status: ExitStatus.notExecutable) }
            return file
        }
        let directories = searchPath.split(separator: ":").map(String.init).filter { !$0.isEmpty }
        for directory in directories {
            let candidate = absolute(directory) + "/" + program
            if isExecutableFile(candidate) { return candidate }
        }
        throw Problem(message: "\(program): not found in PATH (searched \(directories.joined(separator: ":")))", status: ExitStatus.notFound)
    }

    /// The ELF to load and its argv for running `path` with `argv` (argv[0] first); unchanged
    /// for anything but a script.
    static func followingScripts(_ path: String, argv: [String], searchPath: String) throws(Problem) -> Program {
        // The script is named by its absolute path (the guest's working directory need not
        // be this one, so `./x.py` could name nothing there).
        var (program, arguments, scripts) = (standardized(absolute(path)), argv, [String]())
        guard shebang(program) != nil else { return Program(executable: path, arguments: argv, scripts: []) }
        while let line = shebang(program) {
            guard scripts.count < ScriptLine.nestingLimit else {
                throw Problem(message: "\(path): too many levels of #! interpreters (Linux's limit is \(ScriptLine.nestingLimit))", status: ExitStatus.notExecutable)
            }
            scripts.append(program)
            var interpreter = line.interpreter
            var optional = line.argument
            if interpreter == "/usr/bin/env" || interpreter == "/bin/env", let name = optional, !name.hasPrefix("-"), !name.contains(" ") {
                guard let found = try? find(name, searchPath: searchPath) else {
                    throw Problem(message: "\(program): its interpreter \(name) (#!\(line.interpreter) \(name)) is not in PATH", status: ExitStatus.notFound)
                }
                (interpreter, optional) = (found, nil)
            }
            guard interpreter.hasPrefix("/") else {
                throw Problem(message: "\(program): its #! interpreter \(interpreter) is not an absolute path", status: ExitStatus.notExecutable)
            }
            // The kernel's argv: interpreter, its optional argument, the script as it was named, the rest.
            arguments = [interpreter] + (optional.map { [$0] } ?? []) + [program] + arguments.dropFirst()
            program = interpreter
        }
        return Program(executable: program, arguments: arguments, scripts: scripts)
    }

    /// `path` made absolute against the host's working directory.
    static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" + path }
        let directory = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return directory == "/" ? "/" + path : directory + "/" + path
    }

    /// An absolute path without `.` and `..` components or repeated slashes (lexically, as a
    /// shell prints it; links are not followed).
    static func standardized(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." { _ = parts.popLast(); continue }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
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

extension Sandbox {
    /// Loads `program` (see `Program.lookup`) into a new VM: `configuration` with the program's
    /// path, arguments and script grants applied.
    public convenience init(_ program: Program, configuration: SandboxConfiguration = .init(), system: KVMSystem? = nil) throws(SandboxError) {
        var configuration = configuration
        program.apply(to: &configuration)
        try self.init(elfPath: program.executable, configuration: configuration, system: system)
    }
}
