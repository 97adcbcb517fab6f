/// Typed calls both ways, on top of the numbered ABI: Swift values in, Swift values out.
///
/// ```swift
/// let sum: Int64 = try vm.call("add", 2, 40)                 // a guest function, typed
/// let n: Int32 = try vm.call("say", "hello")                 // a String goes in as a C string
/// try vm.register(0x1000) { (text: String, times: Int) in    // a host function, typed: the guest
///     text.utf8.count * times                                //   calls ks_hostcall(0x1000, ptr, len, times, ...)
/// }
/// ```
///
/// Integers, `Bool`, `String` and `[UInt8]` are supported. A guest function's result is its
/// integer return register; a `String` or `[UInt8]` parameter of a host function takes two of
/// the six argument words (address, length). Floating-point values travel in vector registers,
/// which the host-call ABI does not carry: pass them as their bit patterns (`Double(bitPattern:)`).

// MARK: - Guest functions (the host calls the guest)

/// A Swift value a guest function takes as an argument.
public protocol GuestCallArgument: Sendable {
    /// The argument as the calling convention passes it.
    var guestArgument: GuestArgument { get }
}

/// A Swift value a guest function's integer result converts to, as C's calling convention
/// defines it (an `int` is the low 32 bits, a `bool` the low 8).
public protocol GuestCallResult: Sendable {
    /// The value the returned register holds.
    init(guestReturn word: UInt64)
}

extension Int64: GuestCallArgument, GuestCallResult {
    /// As a two's-complement word.
    public var guestArgument: GuestArgument { .integer(UInt64(bitPattern: self)) }
    /// The whole register.
    public init(guestReturn word: UInt64) { self.init(bitPattern: word) }
}

extension Int: GuestCallArgument, GuestCallResult {
    /// As a two's-complement word.
    public var guestArgument: GuestArgument { .integer(UInt64(bitPattern: Int64(self))) }
    /// The whole register (a C `long`).
    public init(guestReturn word: UInt64) { self.init(Int64(bitPattern: word)) }
}

extension Int32: GuestCallArgument, GuestCallResult {
    /// Sign-extended to a word.
    public var guestArgument: GuestArgument { .integer(UInt64(bitPattern: Int64(self))) }
    /// The low 32 bits (a C `int`; the upper half of the register is undefined).
    public init(guestReturn word: UInt64) { self.init(truncatingIfNeeded: word) }
}

extension UInt64: GuestCallArgument, GuestCallResult {
    /// As is.
    public var guestArgument: GuestArgument { .integer(self) }
    /// The whole register.
    public init(guestReturn word: UInt64) { self = word }
}

extension UInt32: GuestCallArgument, GuestCallResult {
    /// Zero-extended to a word.
    public var guestArgument: GuestArgument { .integer(UInt64(self)) }
    /// The low 32 bits (a C `unsigned`).
    public init(guestReturn word: UInt64) { self.init(truncatingIfNeeded: word) }
}

extension Bool: GuestCallArgument, GuestCallResult {
    /// 1 or 0.
    public var guestArgument: GuestArgument { .integer(self ? 1 : 0) }
    /// Whether the low 8 bits are non-zero (a C `bool`).
    public init(guestReturn word: UInt64) { self = word & 0xff != 0 }
}

extension String: GuestCallArgument {
    /// Copied onto the guest's stack as a NUL-terminated C string; the function gets its address.
    public var guestArgument: GuestArgument { .string(self) }
}

extension Array: GuestCallArgument where Element == UInt8 {
    /// Copied onto the guest's stack; the function gets their address (pass the count too).
    public var guestArgument: GuestArgument { .bytes(self) }
}

extension Sandbox {
    /// Calls the guest function `function` with typed arguments and converts what it returns:
    /// `let sum: Int64 = try vm.call("add", 2, 40)`. Any other end of the call (a fault, a
    /// timeout, an exit) throws `SandboxError.callDidNotReturn` with the outcome, which the
    /// untyped `call` returns instead.
    public func call<each Argument: GuestCallArgument, Result: GuestCallResult>(
        _ function: String, _ arguments: repeat each Argument
    ) throws(SandboxError) -> Result {
        var list: [GuestArgument] = []
        for argument in repeat each arguments { list.append(argument.guestArgument) }
        let outcome = try call(function, arguments: list)
        guard case .returned(let word) = outcome else { throw .callDidNotReturn(function: function, outcome: outcome) }
        return Result(guestReturn: word)
    }
}

// MARK: - Host functions (the guest calls the host)

/// A Swift value a host function takes from the guest's argument words.
public protocol HostFunctionParameter: Sendable {
    /// How many of the six argument words it takes (1; 2 for an address and a length).
    static var words: Int { get }
    /// The value from `call`'s words starting at `index`. Throws `GuestMemoryError` (the
    /// guest gets `-EFAULT`) or `HostCallFailure` (`-errno`) for what the guest got wrong.
    static func decode(_ call: HostCall, at index: Int) throws -> Self
}

/// A Swift value a host function returns to the guest (its result register, as `Int64`;
/// negative values in -4095...-1 read as `-errno` by the SDK's conventions).
public protocol HostFunctionResult: Sendable {
    /// The value the guest's result register gets.
    var hostCallValue: Int64 { get }
}

extension HostFunctionParameter where Self: FixedWidthInteger {
    /// One word.
    public static var words: Int { 1 }
    /// The word, truncated to the type's width as C's conversions do.
    public static func decode(_ call: HostCall, at index: Int) throws -> Self { Self(truncatingIfNeeded: call[index]) }
}

extension HostFunctionResult where Self: FixedWidthInteger {
    /// Sign- or zero-extended to 64 bits (an unsigned 64-bit value keeps its bit pattern).
    public var hostCallValue: Int64 { Int64(truncatingIfNeeded: self) }
}

extension Int64: HostFunctionParameter, HostFunctionResult {}
extension Int: HostFunctionParameter, HostFunctionResult {}
extension Int32: HostFunctionParameter, HostFunctionResult {}
extension UInt64: HostFunctionParameter, HostFunctionResult {}
extension UInt32: HostFunctionParameter, HostFunctionResult {}

extension Bool: HostFunctionParameter, HostFunctionResult {
    /// One word.
    public static var words: Int { 1 }
    /// Whether the word is non-zero.
    public static func decode(_ call: HostCall, at index: Int) throws -> Bool { call[index] != 0 }
    /// 1 or 0.
    public var hostCallValue: Int64 { self ? 1 : 0 }
}

/// The most bytes a `String` or `[UInt8]` parameter copies out of the guest: a longer length is
/// `-E2BIG` for the guest, never an allocation of the guest's choosing.
public let maximumHostFunctionBytes = 16 << 20

extension Array: HostFunctionParameter where Element == UInt8 {
    /// Two words: the address and the length.
    public static var words: Int { 2 }
    /// The bytes at the address (checked as the guest's own reads would be).
    public static func decode(_ call: HostCall, at index: Int) throws -> [UInt8] {
        guard call[index + 1] <= UInt64(maximumHostFunctionBytes) else { throw HostCallFailure(HostCallErrno.E2BIG) }
        return try call.memory.read(call[index], count: Int(call[index + 1]))
    }
}

extension String: HostFunctionParameter {
    /// Two words: the address and the length in bytes (UTF-8; invalid sequences are replaced).
    public static var words: Int { 2 }
    /// The text at the address.
    public static func decode(_ call: HostCall, at index: Int) throws -> String {
        String(decoding: try [UInt8].decode(call, at: index), as: UTF8.self)
    }
}

extension Sandbox {
    /// Registers a typed host function under `number`: the guest's argument words are decoded
    /// into `function`'s parameters in order (see `HostFunctionParameter`), and its result goes
    /// back to the guest. Throws `.invalidArguments` when the parameters need more than six
    /// words; what the guest passes wrong is an errno for the guest (`-EFAULT` for a bad
    /// address), never a crash.
    public func register<each Parameter: HostFunctionParameter, Result: HostFunctionResult>(
        _ number: Int, _ function: @escaping @Sendable (repeat each Parameter) throws -> Result
    ) throws(SandboxError) {
        var words = 0
        for type in repeat (each Parameter).self { words += type.words }
        guard words <= 6 else {
            throw .invalidArguments("host function \(number) takes \(words) argument words; a host call carries 6")
        }
        try register(number) { call in
            var index = 0
            func next<Value: HostFunctionParameter>(_ type: Value.Type) throws -> Value {
                defer { index += Value.words }
                return try Value.decode(call, at: index)
            }
            return try function(repeat try next((each Parameter).self)).hostCallValue
        }
    }
}
