// swift-tools-version: 6.0
// The embedder example as a package of its own, depending on KVMSandbox by path: copy this
// directory next to a checkout and `swift run embedder-example plugin.elf`. (The main package
// also builds these sources as its `embedder-example` product, which CI runs.)
import PackageDescription

let package = Package(
    name: "EmbedderExample",
    platforms: [.macOS(.v13)],
    dependencies: [.package(name: "KVMSandbox", path: "../..")],
    targets: [
        .executableTarget(name: "EmbedderExample", dependencies: [.product(name: "KVMSandbox", package: "KVMSandbox")],
                          path: "Sources/EmbedderExample"),
    ]
)
