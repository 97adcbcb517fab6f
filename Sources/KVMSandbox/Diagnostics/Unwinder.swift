/// Walks a guest's stack from its registers, reading guest memory only through checked,
/// user-permission accesses: an odd stack or frame chain ends the walk with a note and never
/// faults the host.
///
/// Per frame it uses DWARF call-frame rules where `.eh_frame` covers the code, else the RBP
/// chain. Registers are held by DWARF number (`DwarfRegister`, the architecture's).
struct Unwinder {
    /// The deepest backtrace reported.
    static let maximumDepth = 128
    /// musl's and glibc's start-up functions: the walk ends at the first of them, since their
    /// callers (`_start`) have neither CFI nor a frame pointer.
    static let startUpFunctions: Set<String> = [
        "libc_start_main_stage2", "__libc_start_main", "__libc_start_call_main", "_start_c", "_start",
        "start_thread", "clone3", "__clone3", "clone", "__clone",  // a thread's first frames
    ]

    /// The program, its loader and libraries: what addresses may be symbolized and unwound.
    let modules: [CodeModule]
    /// Reads 8 bytes of guest memory as the guest could, or nil.
    let readWord: (UInt64) -> UInt64?

    func backtrace(from registers: GuestRegisters) -> Backtrace {
        var state = DwarfRegister.state(of: registers)
        var frames = [frame(registers.instructionPointer, isReturnAddress: false, foundBy: .registers)]
        var end = "stopped after \(Self.maximumDepth) frames"
        while frames.count < Self.maximumDepth {
            let step = unwind(state, isInnermost: frames.count == 1)
            guard case .caller(let caller, let method) = step else {
                if case .end(let why) = step { end = why }
                break
            }
            guard let pc = caller[DwarfRegister.returnAddress], pc != 0 else { end = "reached the outermost frame"; break }
            guard modules.containing(pc) != nil else {
                end = "return address 0x\(String(pc, radix: 16)) is outside the program's code"
                break
            }
            guard pc != state[DwarfRegister.returnAddress] || caller[DwarfRegister.stackPointer] != state[DwarfRegister.stackPointer] else {
                end = "the same frame again (a frame loop)"
                break
            }
            guard let sp = caller[DwarfRegister.stackPointer], let oldSP = state[DwarfRegister.stackPointer], sp > oldSP else {
                end = "the stack pointer did not move up (a frame loop)"
                break
            }
            let next = frame(pc, isReturnAddress: true, foundBy: method)
            frames.append(next)
            if let function = next.function, Self.startUpFunctions.contains(function) {
                end = "reached the C runtime's start-up code"
                break
            }
            state = caller
        }
        var lineInfoUnavailable = modules.first.map { $0.debugInfo.value.lineInfoUnavailable } ?? "no debug information loaded"
        if lineInfoUnavailable == nil, frames.allSatisfy({ $0.source == nil }) {
            lineInfoUnavailable = "the DWARF line tables cover none of these addresses (build with -g)"
        }
        return Backtrace(frames: frames, end: end, lineInfoUnavailable: lineInfoUnavailable)
    }

    private enum Step {
        case caller([Int: UInt64], UnwindMethod)
        case end(String)
    }

    /// The caller's registers, from call-frame rules or the frame-pointer chain.
    private func unwind(_ state: [Int: UInt64], isInnermost: Bool) -> Step {
        guard let pc = state[DwarfRegister.returnAddress] else { return .end("the return address is unknown") }
        // A return address points after the call; look up the call itself.
        if let module = modules.containing(isInnermost ? pc : pc &- 1),
           let rule = module.debugInfo.value.callFrameRule(at: (isInnermost ? pc : pc &- 1) &- module.base) {
            return apply(rule, to: state)
        }
        if isInnermost, let caller = callerFromStackTop(state) { return .caller(caller, .stackTop) }
        guard let rbp = state[DwarfRegister.framePointer] else { return .end("rbp is unknown after a frame without call-frame information") }
        if rbp == 0 { return .end("reached the outermost frame (rbp = 0)") }
        guard let savedRBP = readWord(rbp), let returnAddress = readWord(rbp &+ 8) else {
            return .end("frame pointer 0x\(String(rbp, radix: 16)) does not point into readable guest memory")
        }
        var caller = state
        caller[DwarfRegister.framePointer] = savedRBP
        caller[DwarfRegister.stackPointer] = rbp &+ 16
        caller[DwarfRegister.returnAddress] = returnAddress
        return .caller(caller, .framePointer)
    }

    private func apply(_ rule: CallFrameRule, to state: [Int: UInt64]) -> Step {
        guard let base = state[rule.cfaRegister] else {
            return .end("the CFA register \(rule.cfaRegister) is unknown")
        }
        let cfa = base &+ UInt64(bitPattern: rule.cfaOffset)
        var caller: [Int: UInt64] = [DwarfRegister.stackPointer: cfa]
        for (column, location) in rule.registers {
            switch location {
            case .undefined where column == rule.returnAddressColumn:
                return .end("reached the outermost frame (return address undefined in the call-frame table)")
            case .undefined:
                // libdw cannot tell "unspecified" (the ABI default: callee-saved registers keep
                // their value) from "undefined"; compilers never mark callee-saved registers undefined.
                caller[column] = state[column]
            case .sameValue: caller[column] = state[column]
            case .valueIsCFA(let offset): caller[column] = cfa &+ UInt64(bitPattern: offset)
            case .inRegister(let register): caller[column] = state[register]
            case .savedAtCFA(let offset):
                let slot = cfa &+ UInt64(bitPattern: offset)
                guard let value = readWord(slot) else {
                    return .end("a saved register at 0x\(String(slot, radix: 16)) is not readable guest memory")
                }
                caller[column] = value
            }
        }
        if rule.returnAddressColumn != DwarfRegister.returnAddress { caller[DwarfRegister.returnAddress] = caller[rule.returnAddressColumn] }
        return .caller(caller, .callFrameInfo)
    }

    /// For a fault in a leaf function with neither frame pointer nor CFI (musl's string functions):
    /// the word at RSP, when it is a return address whose preceding `call rel32` targets the
    /// faulting function.
    private func callerFromStackTop(_ state: [Int: UInt64]) -> [Int: UInt64]? {
        guard let pc = state[DwarfRegister.returnAddress], let sp = state[DwarfRegister.stackPointer], let returnAddress = readWord(sp),
              let program = modules.containing(pc), modules.containing(returnAddress) != nil, returnAddress >= 5,
              let (function, _) = program.symbols.function(containing: pc &- program.base),
              let low = readWord(returnAddress &- 8) else { return nil }
        // The 5 bytes before the return address: E8 and a 32-bit displacement.
        guard (low >> 24) & 0xff == 0xe8 else { return nil }
        let displacement = Int64(Int32(truncatingIfNeeded: low >> 32))
        let target = returnAddress &+ UInt64(bitPattern: displacement)
        guard target &- program.base == function.address else { return nil }
        var caller = state
        caller[DwarfRegister.stackPointer] = sp &+ 8
        caller[DwarfRegister.returnAddress] = returnAddress
        return caller
    }

    private func frame(_ address: UInt64, isReturnAddress: Bool, foundBy: UnwindMethod) -> Backtrace.Frame {
        guard let module = modules.containing(isReturnAddress ? address &- 1 : address) else {
            return Backtrace.Frame(address: address, function: nil, offset: nil, source: nil, foundBy: foundBy)
        }
        let lookup = (isReturnAddress ? address &- 1 : address) &- module.base
        let symbol = module.symbols.function(containing: lookup)
        return Backtrace.Frame(
            address: address, function: symbol?.0.name,
            offset: symbol.map { address &- module.base &- $0.0.address } ?? (module.name == nil ? nil : address &- module.base),
            source: module.lineInfo.value.sourceLocation(lookup), foundBy: foundBy, module: module.name)
    }
}
