import ArgumentParser
import KVMSandbox

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

    func run() throws {
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
