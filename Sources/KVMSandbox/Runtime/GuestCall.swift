
/// An argument of a guest function call, passed in the System V registers (rdi, rsi, rdx, rcx,
/// r8, r9): an integer as it is, bytes copied onto the guest's stack and passed as a pointer.
public enum GuestArgument: Sendable, Equatable, ExpressibleByIntegerLiteral {
    /// An integer (or a guest pointer the host already knows).
    case integer(UInt64)
    /// Bytes the host copies into guest memory (16-byte aligned, on the stack below the red zone);
    /// the function receives their address. Pass the length as a separate `.integer`.
    case bytes([UInt8])

    /// A NUL-terminated C string.
    public static func string(_ text: String) -> GuestArgument { .bytes(Array(text.utf8) + [0]) }

    /// An integer argument from a literal (negative values as two's complement).
    public init(integerLiteral value: Int64) { self = .integer(UInt64(bitPattern: value)) }
}

extension Sandbox {
    /// The stack a guest function call keeps free below its arguments for the callee.
    static let minimumCallStack: UInt64 = 64 << 10

    /// Calls the guest function `function` (an ELF symbol) with up to six arguments and runs it
    /// until it returns (`.returned(rax)`), or ends otherwise (a fault, timeout, exit: the same
    /// outcomes and reports as `run()`). The guest may make host calls meanwhile. The sandbox must
    /// be paused (a fork, or after `runUntilReady()`); after a return it is paused again, as
    /// before the call, with whatever the function changed in memory (`reset()` undoes that).
    public func call(_ function: String, _ arguments: GuestArgument...) throws(SandboxError) -> RunOutcome {
        try call(function, arguments: arguments)
    }

    /// `call(_:_:)` with the arguments as an array.
    public func call(_ function: String, arguments: [GuestArgument]) throws(SandboxError) -> RunOutcome {
        guard case .paused(let paused) = phase else { throw .notPaused }
        guard let symbol = program.symbols.function(named: function) else { throw .noSuchFunction(function) }
        guard arguments.count <= GuestRegisters.functionArgumentCount else {
            throw .invalidArguments("\(arguments.count) arguments; at most \(GuestRegisters.functionArgumentCount) go in registers")
        }

        // The paused RSP is the guest's: it may point anywhere. Calls run on the program's own
        // stack, so refuse one whose stack pointer is not inside it with room for the call.
        let lowest = stackBottom + Self.minimumCallStack
        let stackTop = stackBottom + configuration.stackSize
        guard paused.stackPointer >= lowest + 256, paused.stackPointer <= stackTop else {
            throw .invalidArguments("the guest paused with its stack pointer at 0x\(String(paused.stackPointer, radix: 16)), outside its stack [0x\(String(stackBottom, radix: 16)), 0x\(String(stackTop, radix: 16))) or without \(Self.minimumCallStack >> 10) KiB free below it")
        }
        var stack = (paused.stackPointer - 128) & ~15  // below the paused code's red zone
        var values: [UInt64] = []
        for argument in arguments {
            switch argument {
            case .integer(let value): values.append(value)
            case .bytes(let bytes):
                // stack >= lowest + 128 here; compare before subtracting so nothing can wrap.
                guard UInt64(bytes.count) <= stack - lowest, (stack - UInt64(bytes.count)) & ~15 >= lowest else {
                    throw .invalidArguments("\(bytes.count) bytes do not fit on the guest stack (\(configuration.stackSize >> 10) KiB, \(Self.minimumCallStack >> 10) KiB kept for the call)")
                }
                stack = (stack - UInt64(bytes.count)) & ~15
                do { try guestMemory.write(bytes, to: stack) } catch { throw .invalidArguments("the guest stack is not writable: \(error)") }
                values.append(stack)
            }
        }
        // At entry RSP + 8 is 16-byte aligned and [RSP] is the return address: the return stub.
        stack -= 8
        do { try guestMemory.store(X86CPUState.returnStubAddress, at: stack) } catch {
            throw .invalidArguments("the guest stack is not writable: \(error)")
        }
        var registers = paused
        registers.prepareFunctionCall(entry: program.base &+ symbol.address, stack: stack, arguments: values)
        vcpu.modifyRegisters { $0 = registers }

        let outcome = try runLoop(until: .guestReturn)
        if case .returned = outcome {
            vcpu.modifyRegisters { $0 = paused }
            phase = .paused(paused)
        }
        return outcome
    }
}
