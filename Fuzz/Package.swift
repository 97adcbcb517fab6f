// swift-tools-version: 6.0
// libFuzzer targets for KVMSandbox, kept out of the main package (they link libFuzzer's main).
// Build and run them with Scripts/fuzz.
import PackageDescription

let package = Package(
    name: "KVMSandboxFuzz",
    dependencies: [.package(path: "..")],
    targets: ["FuzzELF", "FuzzUnwinder", "FuzzHostCalls", "FuzzMailbox"].map { name in
        .executableTarget(name: name, dependencies: [.product(name: "KVMSandbox", package: "main")])
    }
)
