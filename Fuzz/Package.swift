// swift-tools-version: 6.0
// libFuzzer targets for KVMSandbox, kept out of the main package (they link libFuzzer's main).
// Build and run them with Scripts/fuzz.
import PackageDescription

// SwiftPM names a path dependency after its directory: the checkout's, whatever it is called.
let parent = String(Context.packageDirectory.split(separator: "/").dropLast().last ?? "main")

let package = Package(
    name: "KVMSandboxFuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "FuzzSupport", dependencies: [.product(name: "KVMSandbox", package: parent)]),
    ] + ["FuzzELF", "FuzzUnwinder", "FuzzHostCalls", "FuzzMailbox", "FuzzSnapshotFile"].map { name in
        .executableTarget(name: name, dependencies: ["FuzzSupport", .product(name: "KVMSandbox", package: parent)])
    }
)
