/// One Linux system call as the Linux layer knows it: its name and argument count (for
/// `--trace-syscalls` and reports), what the host may do with it off the vCPU thread, what it
/// costs the host, and its handler. The architecture's table (`SystemCallTable.guest`) gives
/// each entry its number; nothing outside that table names a system call by number.
struct LinuxSystemCall: Sendable {
    /// Serves the call for the Linux layer. A handler decodes the arguments (their order is the
    /// architecture's) and calls the layer's typed method.
    typealias Handler = @Sendable (LinuxPersonality, HostCall) throws -> HostCallEffect

    /// The architecture's number for the call (the guest's `rax` on x86-64).
    let number: Int
    /// The name strace gives it.
    let name: String
    /// How `--trace-syscalls` shows each argument, one character per argument
    /// (`LinuxTraceFormat.argument`): `x` hex, `d` signed decimal, `u` unsigned decimal, `f` a
    /// descriptor, `p` a path or string, `o` octal (a mode), `s` a signal number.
    let argumentKinds: String
    /// How many arguments it takes.
    var arguments: Int { argumentKinds.count }
    /// Whether the host's polling thread may serve it without an exit (`LinuxExitless.swift`).
    let exitless: ExitlessPolicy
    /// What it does with the descriptor in its first argument, if it transfers data through one.
    let transfer: Transfer?
    /// What it makes the host hold, refused once the host budget is spent (`HostBudget.swift`).
    let hostCost: HostCost
    /// How it may wait for an incoming connection (socket mode's ready point).
    let connectionWait: ConnectionWait?
    let handler: Handler

    /// Data moved through the descriptor in argument 0.
    enum Transfer {
        /// Data read from it (`read`, `pread64`, `readv`, `preadv`).
        case reads
        /// Data written to it.
        case writes
        /// A socket's receive (`recvfrom`, `recvmsg`).
        case receives
        /// A socket's send.
        case sends

        /// Whether data goes from the guest to the descriptor.
        var isOutgoing: Bool { self == .writes || self == .sends }
    }

    /// When the polling thread may serve the call while the guest spins in the exitless stub.
    enum ExitlessPolicy {
        /// Never: it changes the vCPU, may block, or takes access away on purpose.
        case never
        /// Always: it only reads or writes guest memory and the Linux layer's own state.
        case always
        /// When its transfer cannot wait (a file, in-memory data, or a connection with data or room).
        case whenTransferCannotWait
        /// When a connection is pending (`accept`).
        case whenConnectionPending
        /// When it only wakes (`futex` WAKE and WAKE_BITSET).
        case whenFutexWakes
        /// When it maps at most `exitlessMappingLimit` bytes of non-executable anonymous memory
        /// (or reserves any amount).
        case whenSmallAnonymousMapping
        /// When the length in argument 1 is at most `exitlessMappingLimit` (`madvise`).
        case whenSmallRange
        /// When the heap grows by at most `exitlessMappingLimit` bytes (`brk`).
        case whenSmallHeapGrowth
    }

    /// What a call makes the host hold.
    enum HostCost {
        /// Nothing beyond the call.
        case none
        /// A host object or record (a mapping, a pipe, an epoll set, an eventfd, a socket): ENOMEM.
        case hostObject
        /// A host object when argument 1 is `value` (`epoll_ctl(EPOLL_CTL_ADD)`): ENOMEM.
        case hostObjectWhenArgument1(UInt64)
        /// A thread: EAGAIN.
        case thread
    }

    /// How a call may wait for a connection on the listening socket.
    enum ConnectionWait {
        /// `accept`/`accept4` on the descriptor in argument 0.
        case accept
        /// `poll`/`ppoll` over the pollfds at argument 0, their count in argument 1.
        case poll
        /// `epoll_wait` and its kin on the epoll set in argument 0.
        case epoll
    }

    init(_ number: Int, _ name: String, _ argumentKinds: String, exitless: ExitlessPolicy = .never, transfer: Transfer? = nil,
         hostCost: HostCost = .none, connectionWait: ConnectionWait? = nil, _ handler: @escaping Handler) {
        self.number = number
        self.name = name
        self.argumentKinds = argumentKinds
        self.exitless = exitless
        self.transfer = transfer
        self.hostCost = hostCost
        self.connectionWait = connectionWait
        self.handler = handler
    }
}

/// Every Linux system call the layer serves on one architecture, by number: the one place a
/// call is added (its entry here, its handler in the Linux layer). `LinuxPersonality.dispatch`,
/// the exitless server, the host budget and `--trace-syscalls` all read it.
struct SystemCallTable: Sendable {
    private let entries: [LinuxSystemCall?]

    /// A table of `calls`; a number given twice is a programming error (caught by the tests).
    init(_ calls: [LinuxSystemCall]) {
        let highest = calls.map(\.number).max() ?? 0
        var entries = [LinuxSystemCall?](repeating: nil, count: highest + 1)
        for call in calls {
            assert(entries[call.number] == nil, "system call \(call.number) is in the table twice")
            entries[call.number] = call
        }
        self.entries = entries
    }

    /// The entry for `number`, or nil for a call the layer does not know (ENOSYS).
    subscript(number: Int) -> LinuxSystemCall? {
        number >= 0 && number < entries.count ? entries[number] : nil
    }

    /// Every entry, by number.
    var all: [LinuxSystemCall] { entries.compactMap { $0 } }

    /// The call's name, or `syscall_N` for an unknown one.
    func name(_ number: Int) -> String { self[number]?.name ?? "syscall_\(number)" }

    /// How many arguments a trace shows (6 for an unknown call).
    func argumentCount(_ number: Int) -> Int { self[number]?.arguments ?? 6 }

    /// How a trace shows each argument (six in hex for an unknown call).
    func argumentKinds(_ number: Int) -> String { self[number]?.argumentKinds ?? "xxxxxx" }
}
