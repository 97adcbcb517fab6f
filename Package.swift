// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "KVMSandbox",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "KVMSandbox", targets: ["KVMSandbox"]),
        .library(name: "KVMSandboxServer", targets: ["KVMSandboxServer"]),
        .executable(name: "kvmsandbox", targets: ["kvmsandbox"]),
        // Examples/Embedder: what an embedding server does with the library (run in CI).
        .executable(name: "embedder-example", targets: ["EmbedderExample"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.0"..<"5.0.0"),
        // `swift package generate-documentation` (the DocC catalog, built by Scripts/docs in CI).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
        // `kvmsandbox mcp`: the official Model Context Protocol SDK.
        .package(url: "https://github.com/modelcontextprotocol/swift-sdk", from: "0.12.0"),
    ],
    targets: [
        // The only C on the host side: <linux/kvm.h> structs, ioctl numbers, the variadic ioctl call.
        .target(name: "CKVM"),
        // The host's Linux calls Swift's Glibc module does not show (openat2, getdents64,
        // getrandom, memfd_create, affinity, cpuid): nothing of KVM.
        .target(name: "CHost"),
        .target(
            name: "KVMSandbox",
            dependencies: [
                "CKVM",
                "CHost",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
                // HMAC-SHA256 of keyed snapshot files.
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // What the CLI and the tests use beside the library: benchmarks, the conformance corpus,
        // the guest toolchain, KVM capability and struct-size reports. Not part of the library's API.
        .target(
            name: "KVMSandboxTools",
            dependencies: [
                "KVMSandbox",
                "CKVM",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Per-request isolation over HTTP (`kvmsandbox serve`): SwiftNIO, metrics and the service
        // lifecycle stay out of the core library, so embedders of KVMSandbox alone do not build them.
        .target(
            name: "KVMSandboxServer",
            dependencies: [
                "KVMSandbox",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Code execution for AI agents (`kvmsandbox mcp`): stateful Python sessions in micro-VMs
        // behind the Model Context Protocol. Apart, so that `serve` embedders do not build MCP.
        .target(
            name: "KVMSandboxAgents",
            dependencies: [
                "KVMSandbox",
                "KVMSandboxServer",
                .product(name: "MCP", package: "swift-sdk"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .executableTarget(
            name: "kvmsandbox",
            dependencies: [
                "KVMSandbox",
                "KVMSandboxServer",
                "KVMSandboxAgents",
                "KVMSandboxTools",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "EmbedderExample", dependencies: ["KVMSandbox"], path: "Examples/Embedder/Sources/EmbedderExample"),
        .testTarget(name: "KVMSandboxTests", dependencies: [
            "KVMSandbox", "KVMSandboxServer", "KVMSandboxTools", "KVMSandboxAgents",
            .product(name: "MCP", package: "swift-sdk"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
    ]
)
