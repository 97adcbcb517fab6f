/// The idle stub of a parked VM (`ParkedSandbox`): host-written user code (CPL 3) in the
/// read-only stub page that waits for requests on the parking page, runs each from a clean
/// state, and answers, all without a VM exit. Its parameters (the snapshot's x87/SSE image, the
/// idle spin, the request stack) sit in the same read-only page, so the guest cannot change them.
///
/// The request goes in the parking page (`GuestLayout.parkingPage`, user read-only, NX), the
/// answer in the arena's header (`GuestLayout.arenaBase`, restored with the arena); 64-bit words:
///
/// | where | field | written by |
/// |---|---|---|
/// | parking + 0 | posted: `done + 1` while a request waits | host, last |
/// | parking + 8 | the function's address | host |
/// | parking + 16-56 | six arguments (rdi, rsi, rdx, rcx, r8, r9) | host |
/// | arena + 0 | the request heap's bytes in use (`ks_request_alloc`) | guest |
/// | arena + 8 | done: the last request answered | guest (the stub), last |
/// | arena + 16 | the function's return value (rax) | guest (the stub) |
///
/// Between requests the host zeroes the parking page's words (the function and posted first)
/// and copies the arena back, so every request is number 1 and nothing of the last one
/// remains. Assembled from (R: parking page, A: arena, P: parameters, F: FXSAVE image):
///
///     park: mov P+0(%rip), %rcx                      # idle spin
///     wait: mov A+8(%rip), %rax; inc %rax; cmp R+0(%rip), %rax; je go
///           pause; dec %rcx; jnz wait
///           mov $0xf03, %eax; out %al, $0x42; jmp park   # KS_HC_PARK_WAIT: sleep on the host
///     go:   mov P+16(%rip), %rsp                     # the request stack (top of the arena)
///           push $2; popfq                           # flags as at a fresh start (DF, AC, TF clear)
///           cmpq $0, P+24(%rip); je legacy           # the snapshot's x87/SSE(/AVX) state:
///           mov $-1, %eax; mov $-1, %edx; xrstor64 F(%rip); jmp loaded    # with OSXSAVE
///   legacy: fxrstor64 F(%rip)                        # without
///   loaded:
///           mov P+32(%rip), %eax; mov %eax, %ds; mov %eax, %es; mov %eax, %gs  # the snapshot's
///           mov R+8(%rip), %r11; mov R+16..R+56(%rip), %rdi, %rsi, %rdx, %rcx, %r8, %r9
///           xor rax, rbx, rbp, r10, r12-r15
///           call *%r11
///           mov %rax, A+16(%rip)
///           cmpq $0, P+8(%rip); je post               # the FS base: loading a selector into FS
///           mov %fs:0, %r11                            # zeroes it, and page 0 is never mapped
///     post: mov R+0(%rip), %r11; mov %r11, A+8(%rip); jmp park
///
/// The FS selector itself is not compared: what the guest reads from it differs from what
/// KVM reports (PVM shows 0), and a null selector load keeps the base.
enum ParkingStub {
    /// Where the stub starts in the stub page (`GuestLayout.syscallStubPage`).
    static let entryOffset: UInt64 = 0x200
    static var entry: UInt64 { GuestLayout.syscallStubPage + entryOffset }
    /// The snapshot's floating-point image in the stub page (64-byte aligned, to the page's
    /// end): the XSAVE area `xrstor64` loads where the guest has OSXSAVE, else the 512-byte
    /// FXSAVE image for `fxrstor64`.
    static let floatingPointOffset: UInt64 = 0x400
    static let maximumImageSize = Int(PageSize.bytes - floatingPointOffset)
    /// The parameter words: idle spin count, whether to check the FS base, the request stack top,
    /// whether to use `xrstor64`, the DS/ES/GS selector.
    static let parametersOffset: UInt64 = 0x380
    /// The host call the idle loop sleeps with.
    static let parkWait = HostCallNumber.parkWait
    /// Parking-page offsets.
    static let posted: UInt64 = 0, function: UInt64 = 8, arguments: UInt64 = 16
    /// Arena offsets: the request heap's header (bytes in use), the answer, the result.
    static let heapUsed: UInt64 = 0, done: UInt64 = 8, result: UInt64 = 16
    /// Where the request heap starts in the arena.
    static let heapStart: UInt64 = 64

    static let code: [UInt8] = [
        0x48, 0x8b, 0x0d, 0x79, 0x01, 0x00, 0x00, 0x48, 0x8b, 0x05, 0xfa, 0xed, 0x0f, 0x00, 0x48, 0xff,
        0xc0, 0x48, 0x3b, 0x05, 0xe8, 0x2d, 0x00, 0x00, 0x74, 0x10, 0xf3, 0x90, 0x48, 0xff, 0xc9, 0x75,
        0xe6, 0xb8, 0x03, 0x0f, 0x00, 0x00, 0xe6, 0x42, 0xeb, 0xd6, 0x48, 0x8b, 0x25, 0x5f, 0x01, 0x00,
        0x00, 0x6a, 0x02, 0x9d, 0x48, 0x83, 0x3d, 0x5c, 0x01, 0x00, 0x00, 0x00, 0x74, 0x14, 0xb8, 0xff,
        0xff, 0xff, 0xff, 0xba, 0xff, 0xff, 0xff, 0xff, 0x48, 0x0f, 0xae, 0x2d, 0xb0, 0x01, 0x00, 0x00,
        0xeb, 0x08, 0x48, 0x0f, 0xae, 0x0d, 0xa6, 0x01, 0x00, 0x00, 0x8b, 0x05, 0x40, 0x01, 0x00, 0x00,
        0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xe8, 0x4c, 0x8b, 0x1d, 0x9b, 0x2d, 0x00, 0x00, 0x48, 0x8b, 0x3d,
        0x9c, 0x2d, 0x00, 0x00, 0x48, 0x8b, 0x35, 0x9d, 0x2d, 0x00, 0x00, 0x48, 0x8b, 0x15, 0x9e, 0x2d,
        0x00, 0x00, 0x48, 0x8b, 0x0d, 0x9f, 0x2d, 0x00, 0x00, 0x4c, 0x8b, 0x05, 0xa0, 0x2d, 0x00, 0x00,
        0x4c, 0x8b, 0x0d, 0xa1, 0x2d, 0x00, 0x00, 0x31, 0xc0, 0x31, 0xdb, 0x31, 0xed, 0x45, 0x31, 0xd2,
        0x45, 0x31, 0xe4, 0x45, 0x31, 0xed, 0x45, 0x31, 0xf6, 0x45, 0x31, 0xff, 0x41, 0xff, 0xd3, 0x48,
        0x89, 0x05, 0x5a, 0xed, 0x0f, 0x00, 0x48, 0x83, 0x3d, 0xca, 0x00, 0x00, 0x00, 0x00, 0x74, 0x09,
        0x64, 0x4c, 0x8b, 0x1c, 0x25, 0x00, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x1d, 0x30, 0x2d, 0x00, 0x00,
        0x4c, 0x89, 0x1d, 0x31, 0xed, 0x0f, 0x00, 0xe9, 0x24, 0xff, 0xff, 0xff,
    ]

    /// The stub's address range.
    static var range: Range<UInt64> { entry ..< entry + UInt64(code.count) }
    /// Where the idle loop's `out` (its sleep) is.
    static let idleOutOffset: UInt64 = 0x26
    /// The idle loop proper (`park` up to `go`): a vCPU stopped there runs no request.
    static var idleRange: Range<UInt64> { entry ..< entry + 0x2a }

    /// The image for `fxrstor64` (512 bytes, the XSAVE area's legacy region) or, with `xsave`,
    /// for `xrstor64` (the standard-format XSAVE area of `size` bytes, XCOMP_BV zero) from a
    /// vCPU's floating-point state. In the legacy region, components in their initial state get
    /// their architectural initial values (FCW 0x37f, MXCSR 0x1f80), which KVM may leave as zeros.
    /// `xcr0`: the guest's enabled components; the header keeps only those (xrstor faults on others).
    static func floatingPointImage(_ state: FloatingPointState, xsave: Bool, size: Int, xcr0: UInt64) -> [UInt8]? {
        guard case .xsave(let saved) = state, !xsave || (576...maximumImageSize).contains(size) else { return nil }
        var area = saved.value
        var image = withUnsafeBytes(of: &area.region) { Array($0.prefix(xsave ? min(size, 4096) : 512)) }
        if xsave {
            // The XSAVE header: XSTATE_BV within XCR0, XCOMP_BV 0 (standard form), reserved zero.
            let components = UInt64(littleEndianBytes: image[512..<520]) & xcr0
            image.replaceSubrange(512..<576, with: components.littleEndianBytes + [UInt8](repeating: 0, count: 56))
        }
        let components = withUnsafeBytes(of: &area.region) { $0.load(fromByteOffset: 512, as: UInt64.self) }
        if components & 1 == 0 {
            image.replaceSubrange(0..<24, with: [0x7f, 0x03] + [UInt8](repeating: 0, count: 22))
            image.replaceSubrange(32..<160, with: [UInt8](repeating: 0, count: 128))
        }
        if image[24..<28].allSatisfy({ $0 == 0 }) { image.replaceSubrange(24..<28, with: UInt32(0x1f80).littleEndianBytes) }
        image.replaceSubrange(28..<32, with: [UInt8](repeating: 0, count: 4))  // MXCSR_MASK: ignored by fxrstor
        return image
    }
}
