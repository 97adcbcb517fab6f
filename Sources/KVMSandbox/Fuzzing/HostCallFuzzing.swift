
/// (c) host-call dispatch and (d) the mailbox (embedder calls and posted Linux system calls), against a live VM: one fork of a snapshot of the
/// guest at `KVMSANDBOX_FUZZ_GUEST` (any program that calls `ks_ready()`), reset after every input
/// and checked page by page against its snapshot every `verifyEvery` inputs.
@_spi(Fuzzing) public final class HostCallFuzzer {
    let vm: Sandbox
    let server: ExitlessServer
    var inputs = 0
    /// How often the paranoid reset check runs (it compares all of guest memory).
    let verifyEvery = 256

    /// A harness for the guest at `elfPath`; `grant` (a host directory) appears read-only at
    /// /fuzz/data for the Linux system calls.
    public init(elfPath: String, grant: String? = nil) throws {
        var configuration = SandboxConfiguration()
        configuration.memorySize = 16 << 20
        configuration.arguments = ["fuzz"]
        configuration.standardOutput = .discard
        configuration.standardError = .discard
        configuration.outputLimit = 1 << 20
        configuration.files = grant.map { [FileGrant(hostPath: $0, guestPath: "/fuzz/data")] } ?? []
        configuration.standardInput = .bytes(Array("fuzz input\n".utf8))
        let snapshot = try Snapshot(elfPath: elfPath, configuration: configuration)
        vm = try snapshot.fork()
        try vm.register(HostCallNumber.firstUserNumber, Self.memoryHandler)
        try vm.register(HostCallNumber.firstUserNumber + 1) { call in
            Int64(try call.memory.readCString(call[0], maxLength: Int(call[1] % 8192)).utf8.count)
        }
        server = ExitlessServer(mailbox: vm.mailbox, memory: vm.guestMemory, interrupter: vm.vcpu.interrupter)
    }

    /// A handler that reads or writes guest memory where the arguments say.
    static func memoryHandler(_ call: HostCall) throws -> Int64 {
        let count = Int(call[1] % (1 << 20))
        if call[2] & 1 == 0 { return Int64(try call.memory.read(call[0], count: count).count) }
        try call.memory.write([UInt8](repeating: UInt8(truncatingIfNeeded: call[3]), count: count), to: call[0])
        try call.memory.store(call[4], at: call[0] &+ call[5] % 64)
        return 0
    }

    /// Host calls decoded from `data`, each served as if the guest had trapped with them.
    public func hostCalls(_ data: [UInt8]) throws {
        var decoder = ArgumentDecoder(data, vm: vm)
        // No watchdog runs here: with the vCPU marked as kicked (as at a passed deadline), calls
        // that would wait (sleeps, an empty pipe, stdin) return EINTR at once instead of hanging.
        vm.vcpu.interrupter.immediateExit.store(1, ordering: .relaxed)
        while let (number, arguments) = decoder.nextCall() {
            // Half the calls as if by `syscall` (the Linux personality), half by `out`.
            let viaSyscall = decoder.nextByte() & 1 == 0
            vm.vcpu.modifyRegisters { r in
                r.instructionPointer = viaSyscall ? GuestLayout.syscallStubPage + 2 : vm.program.entry
                r.setCall(number: number, arguments: arguments)
            }
            _ = try vm.serveHostCall(stop: .end)
        }
        try finishInput()
    }

    /// Mailbox contents decoded from `data`: written into the page, then served by the poller's
    /// and the fallback exit's paths.
    public func mailbox(_ data: [UInt8]) throws {
        // Linux system calls posted by the exitless stub (bit 62) are served too.
        let linux = vm.linux
        server.prepare(handlers: [HostCallNumber.firstUserNumber: Self.memoryHandler], systemCalls: { try linux.serveExitless($0) })
        var decoder = ArgumentDecoder(data, vm: vm)
        while let (number, arguments) = decoder.nextCall() {
            let sequence = decoder.nextWord()
            // Half of the posts as system calls (what the syscall stub sends).
            let posted = decoder.nextByte() & 1 == 0 ? number | ExitlessServer.systemCallFlag : number
            let words = [sequence, UInt64(bitPattern: Int64(posted))] + arguments
            try vm.guestMemory.write([UInt8](littleEndianWords: words), to: GuestLayout.mailboxPage)
            if decoder.nextByte() & 1 == 0 { _ = server.pollOnce() } else { _ = server.waitExit(sequence: decoder.nextWord()) }
        }
        if vm.mailbox.takeWritten() { vm.memory.noteHostWrite(vm.mailboxPhysical, Int(PageSize.bytes)) }
        try finishInput()
    }

    private func finishInput() throws {
        try vm.reset()
        inputs += 1
        if inputs % verifyEvery == 0 {
            let differences = try vm.differencesFromSnapshot()
            precondition(differences.isEmpty, "reset left differences: \(differences)")
        }
    }
}

/// Turns fuzz bytes into host-call numbers and arguments biased toward the interesting:
/// every built-in number, addresses in and around each region of the guest's address space,
/// boundary lengths and sign-extended values.
struct ArgumentDecoder {
    private let data: [UInt8]
    private var offset = 0
    private let regions: [UInt64]
    /// The guest's table of path strings (`fuzz_paths` in the service guest), or 0.
    private let paths: UInt64

    init(_ data: [UInt8], vm: Sandbox) {
        self.data = data
        regions = [0, vm.program.imageRange.lowerBound, vm.program.entry, vm.program.imageEnd, vm.stackBottom,
                   GuestLayout.stackTop &- 4096, GuestLayout.syscallStubPage, GuestLayout.mailboxPage, GuestLayout.doorbellPage,
                   ExceptionStubs.criticalStackPage, ExceptionStubs.stubPage, ExceptionStubs.idtPage, GuestLayout.systemPage,
                   1 << 47, 0xffff_8000_0000_0000, UInt64.max &- 4095, Sandbox.mmapTop(stackBottom: vm.stackBottom)]
        paths = vm.program.symbols.symbol(named: "fuzz_paths").map { vm.program.base &+ $0.address } ?? 0
    }

    static let numbers = [0, 1, 9, 10, 11, 12, 13, 14, 16, 20, 28, 39, 60, 62, 158, 186, 200, 218, 228, 231, 234, 318,
                          0xf00, 0xf02, 0x1000, 0x1001, 0x1002, -1, Int(Int64.min),
                          // Linux system calls (served when the call comes by `syscall`)
                          2, 3, 4, 5, 6, 8, 17, 18, 19, 21, 22, 25, 32, 33, 35, 63, 230, 293, 72, 79, 80, 82, 83, 84, 87, 89, 95, 96, 97,
                          99, 115, 131, 157, 201, 204, 217, 229, 257, 258, 262, 263, 264, 267, 269, 292, 302, 332, 439]

    mutating func nextByte() -> UInt8 {
        guard offset < data.count else { return 0 }
        defer { offset += 1 }
        return data[offset]
    }

    mutating func nextWord() -> UInt64 {
        var value: UInt64 = 0
        for shift in stride(from: 0, to: 64, by: 8) { value |= UInt64(nextByte()) << UInt64(shift) }
        return value
    }

    mutating func nextCall() -> (Int, [UInt64])? {
        guard offset < data.count else { return nil }
        let selector = nextByte()
        let number = selector < 200 ? Self.numbers[Int(selector) % Self.numbers.count] : Int(truncatingIfNeeded: Int64(bitPattern: nextWord()))
        // 0xf01 (the guest-call return) is only meaningful inside a call; everything else goes.
        return (number, (0..<6).map { _ in nextArgument() })
    }

    mutating func nextArgument() -> UInt64 {
        let kind = nextByte()
        switch kind % 8 {
        case 0: return nextWord()
        case 6 where paths != 0, 7 where paths != 0: return paths &+ UInt64(nextByte() % 160)  // into the path strings
        case 6: return UInt64(nextByte())
        case 1: return UInt64(nextByte())
        case 2: return regions[Int(nextByte()) % regions.count] &+ UInt64(nextByte()) &* 8
        case 3: return regions[Int(nextByte()) % regions.count] &- UInt64(nextByte())
        case 4: return [UInt64.max, UInt64(Int64.max), 1 << 32, 1 << 40, 4096, 4095, 0x1000_0000][Int(nextByte()) % 7]
        default: return UInt64(bitPattern: -Int64(nextByte()))
        }
    }
}
