// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "KVMSandbox",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "KVMSandbox", targets: ["KVMSandbox"]),
        .executable(name: "kvmsandbox", targets: ["kvmsandbox"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
    ],
    targets: [
        // The only C on the host side: <linux/kvm.h> structs, ioctl numbers, the variadic ioctl call.
        .target(name: "CKVM"),
        .target(
            name: "KVMSandbox",
            dependencies: [
                "CKVM",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        .executableTarget(
            name: "kvmsandbox",
            dependencies: [
                "KVMSandbox",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "KVMSandboxTests", dependencies: ["KVMSandbox"]),
    ]
)
