import ArgumentParser
import KVMSandbox
import KVMSandboxTools

/// `kvmsandbox cc`: the C compiler with the guest SDK's flags, headers and libc.
struct CC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cc",
        abstract: "Compile a guest program (gcc flags and sources, e.g. -O2 -o hello.elf hello.c).",
        discussion: "Runs musl-gcc -static -fno-omit-frame-pointer -I <sdk>/include with your arguments.")

    @Flag(name: .customLong("print-command"), help: "Print the compiler command line before running it.")
    var printCommand = false

    @Argument(parsing: .captureForPassthrough, help: "Arguments for the compiler.")
    var arguments: [String] = []

    func validate() throws {
        // The compiler's own --help is gcc's; this command's is ours (`-- --help` reaches gcc).
        if arguments.first == "--help" || arguments.first == "-h" { throw CleanExit.helpRequest(self) }
    }

    func run() throws {
        let arguments = self.arguments.first == "--" ? Array(self.arguments.dropFirst()) : self.arguments
        do {
            let toolchain = try GuestToolchain()
            if printCommand { printError(toolchain.commandLine(arguments).joined(separator: " ")) }
            try toolchain.compile(arguments)
        } catch {
            printError("kvmsandbox cc: \(error)")
            throw ExitCode(1)
        }
    }
}
