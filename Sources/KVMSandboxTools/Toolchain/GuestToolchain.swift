import KVMSandbox
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Builds guest programs: the C compiler with musl's libc, static, plus the SDK header.
///
/// `kvmsandbox cc` and the test suite both go through here, so there is one definition of what a
/// guest is built with.
public struct GuestToolchain: Sendable {
    /// The compiler driver (`musl-gcc`: gcc with musl's headers, start files and libc).
    public let compiler: String
    /// The directory holding `kvmsandbox.h`.
    public let includeDirectory: String

    /// Flags every guest is built with: static, no PIE unless asked, frame pointers for backtraces.
    public static let defaultFlags = ["-static", "-fno-omit-frame-pointer"]

    /// Finds `musl-gcc` on PATH and the SDK's include directory.
    public init() throws(ToolchainError) {
        guard let compiler = Self.findOnPath("musl-gcc") else { throw .compilerNotFound("musl-gcc") }
        guard let include = Self.findSDKInclude() else { throw .sdkNotFound }
        self.compiler = compiler
        self.includeDirectory = include
    }

    /// The full argument list for compiling `arguments` (gcc flags, sources, `-o OUT`).
    ///
    /// `-static-pie` gets a real static-PIE: musl-gcc's specs know only `-static` (which would
    /// win and give an ET_EXEC) or a dynamic PIE, so the start files are named explicitly
    /// (musl's self-relocating `rcrt1.o`), libc is linked statically and no interpreter is set.
    public func commandLine(_ arguments: [String]) -> [String] {
        guard arguments.contains("-static-pie"), let lib = Self.findMuslLibraryDirectory() else {
            return [compiler] + Self.defaultFlags + ["-I", includeDirectory] + arguments
        }
        return [compiler, "-fno-omit-frame-pointer", "-I", includeDirectory, "-fPIE", "-nostartfiles",
                "-Wl,--no-dynamic-linker", "-Wl,-Bstatic", "\(lib)/rcrt1.o", "\(lib)/crti.o"]
            + arguments + ["\(lib)/crtn.o"]
    }

    /// The directory of musl's start files and `libc.a`: the one musl-gcc's specs file is in.
    static func findMuslLibraryDirectory() -> String? {
        func has(_ dir: String) -> Bool { access("\(dir)/rcrt1.o", R_OK) == 0 }
        var candidates: [String] = []
        if let script = findOnPath("musl-gcc"), let bytes = try? readFile(script, limit: 1 << 16),
           case let text = String(decoding: bytes, as: UTF8.self), let specs = text.split(whereSeparator: { $0 == " " || $0 == "\"" || $0 == "\n" }).first(where: { $0.hasSuffix("musl-gcc.specs") }) {
            candidates.append(FilePath(String(specs)).removingLastComponent().string)
        }
        candidates += ["/usr/lib/x86_64-linux-musl", "/usr/lib/musl/lib", "/usr/local/musl/lib"]
        return candidates.first(where: has)
    }

    /// Compiles; throws with the compiler's exit status when it fails (its diagnostics go to stderr).
    public func compile(_ arguments: [String]) throws(ToolchainError) {
        let status = Self.spawn(commandLine(arguments))
        guard status == 0 else { throw .compilationFailed(status: status) }
    }

    /// Runs a command (`posix_spawnp`) and waits for it; returns its exit status (127 when it
    /// could not start). `discardingOutput` sends its stdout and stderr to /dev/null.
    public static func spawn(_ command: [String], discardingOutput: Bool = false) -> Int32 {
        var pid = pid_t()
        var cArguments = command.map { strdup($0) } + [nil]
        defer { cArguments.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if discardingOutput {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        guard posix_spawnp(&pid, command[0], &actions, nil, &cArguments, environ) == 0 else { return 127 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    static func findOnPath(_ name: String) -> String? {
        let path = String(cString: getenv("PATH") ?? strdup("/usr/bin:/bin"))
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
    }

    /// `$KVMSANDBOX_SDK/include`, else `Guest/include` found upward from the executable (a
    /// checkout's build), else the header built into this binary (`SDKHeader`), written once to
    /// a private cache directory. Never a path baked in at build time: a copied binary must not
    /// pick up another checkout's header.
    static func findSDKInclude() -> String? {
        func has(_ dir: String) -> Bool { access("\(dir)/kvmsandbox.h", R_OK) == 0 }
        if let sdk = getenv("KVMSANDBOX_SDK").map({ String(cString: $0) }), has("\(sdk)/include") {
            return "\(sdk)/include"
        }
        let executable = FilePath(String(decoding: readLink("/proc/self/exe"), as: UTF8.self))
        var dir = executable.removingLastComponent()
        while !dir.isEmpty && dir != "/" {
            if has(dir.appending("Guest/include").string) { return dir.appending("Guest/include").string }
            dir = dir.removingLastComponent()
        }
        return writeEmbeddedHeader()
    }

    /// Writes `SDKHeader.text` to `$XDG_CACHE_HOME/kvmsandbox/sdk-HASH/` (else
    /// `$HOME/.cache/...`; else a new private temporary directory) unless that file already
    /// holds it; returns the directory. The directories are created 0700; an existing one owned
    /// by another user, or a file there with other contents, is never used (a fresh temporary
    /// directory then).
    static func writeEmbeddedHeader() -> String? {
        let text = Array(SDKHeader.text.utf8)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a: names the version, not a security check
        for byte in text { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let cache = getenv("XDG_CACHE_HOME").map { String(cString: $0) }.flatMap { $0.hasPrefix("/") ? $0 : nil }
            ?? getenv("HOME").map { String(cString: $0) + "/.cache" }
        if let cache, let dir = privateDirectory(cache + "/kvmsandbox/sdk-" + String(hash, radix: 16)) {
            let path = dir + "/kvmsandbox.h"
            if let existing = try? readFile(path, limit: text.count + 1), existing == text { return dir }
            if write(text, to: path) { return dir }
        }
        var template = Array("/tmp/kvmsandbox-sdk-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { return nil }
        let dir = String(cString: made)
        return write(text, to: dir + "/kvmsandbox.h") ? dir : nil
    }

    /// `path` as a directory this user owns with mode 0700, its parents created as needed.
    private static func privateDirectory(_ path: String) -> String? {
        var built = ""
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, 0o700) != 0 && errno != EEXIST { return nil }
        }
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == getuid(), info.st_mode & 0o077 == 0 else { return nil }
        return path
    }

    /// Writes `bytes` to a new file beside `path` and renames it over `path`.
    private static func write(_ bytes: [UInt8], to path: String) -> Bool {
        let temporary = path + ".\(getpid()).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard descriptor >= 0 else { return false }
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
        guard written == bytes.count, rename(temporary, path) == 0 else { unlink(temporary); return false }
        return true
    }

    private static func readLink(_ path: String) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { readlink(path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
        return n > 0 ? Array(buffer[0..<n]) : []
    }
}

/// Why a guest could not be built.
public enum ToolchainError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The compiler driver is not installed.
    case compilerNotFound(String)
    /// The SDK header directory could not be found.
    case sdkNotFound
    /// The compiler exited with a non-zero status.
    case compilationFailed(status: Int32)

    public var description: String {
        switch self {
        case .compilerNotFound(let name):
            return "\(name) not found on PATH: install musl (Debian/Ubuntu: apt-get install musl-tools musl-dev)"
        case .sdkNotFound:
            return "kvmsandbox.h not found and the built-in copy could not be written: set KVMSANDBOX_SDK to a directory holding include/kvmsandbox.h"
        case .compilationFailed(let status):
            return "the guest compiler failed (exit status \(status))"
        }
    }
}
