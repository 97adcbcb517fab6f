import KVMSandbox
import KVMSandboxTools
import Testing

/// The C compiler and Swift must agree on every KVM struct (PLATFORM.md: flexible arrays differ in C++).
@Test func kvmStructLayoutsMatchC() {
    for entry in KVMStructSizes.all {
        #expect(entry.c == entry.swift, "\(entry.name): C says \(entry.c), Swift says \(entry.swift)")
    }
}

/// The TSS I/O bitmap allows exactly the host-call port.
@Test func ioBitmapAllowsOnlyTheHostCallPort() {
    #expect(hostCallPort == 0x42)
}
