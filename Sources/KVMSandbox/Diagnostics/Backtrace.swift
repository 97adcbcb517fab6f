/// The call stack of a guest at a fault, innermost frame first.
public struct Backtrace: Sendable, Equatable, Codable {
    /// One frame: a code address and what the ELF says about it.
    public struct Frame: Sendable, Equatable, Codable, CustomStringConvertible {
        /// The faulting instruction (frame 0) or a return address (callers).
        public let address: UInt64
        /// The function containing the address, from the ELF symbol table.
        public let function: String?
        /// The address's offset into `function`.
        public let offset: UInt64?
        /// file:line from DWARF line tables, when the ELF was built with `-g` and libdw is present.
        public let source: SourceLocation?
        /// How this frame was found from the one below it.
        public let foundBy: UnwindMethod
        /// The library or loader the address lies in ("libc.so.6"); nil in the program itself.
        /// Without a symbol, `offset` is then the offset into the library.
        public let module: String?

        /// A frame as the unwinder found it.
        public init(address: UInt64, function: String?, offset: UInt64?, source: SourceLocation?,
                    foundBy: UnwindMethod, module: String? = nil) {
            (self.address, self.function, self.offset, self.source, self.foundBy, self.module) =
                (address, function, offset, source, foundBy, module)
        }

        /// A one-line, human-readable account of it (what the CLI prints).
        public var description: String {
            var text = "0x" + String(address, radix: 16)
            let offsetText = offset.map { $0 == 0 ? "" : "+0x" + String($0, radix: 16) } ?? ""
            if let function {
                text += " in \(function)" + offsetText + (module.map { " (\($0))" } ?? "")
            } else if let module {
                text += " in \(module)" + offsetText
            }
            if let source { text += " at \(source)" }
            return text
        }
    }

    /// Frames, innermost first; frame 0 is where the fault happened.
    public let frames: [Frame]
    /// Why the walk stopped: the outermost frame, or the odd value that ended it.
    public let end: String
    /// Why frames have no file:line, when that is the case (no libdw, or no `-g`).
    public let lineInfoUnavailable: String?
}

/// How the unwinder found a frame.
public enum UnwindMethod: String, Sendable, Codable {
    /// The faulting instruction itself, from RIP.
    case registers
    /// DWARF call-frame information (`.eh_frame`): works without frame pointers.
    case callFrameInfo = "cfi"
    /// The saved-RBP chain (code built with `-fno-omit-frame-pointer`).
    case framePointer = "frame-pointer"
    /// The return address on top of the stack at a fault in a leaf function with neither frame
    /// pointer nor CFI, accepted only when the call before it targets the faulting function.
    case stackTop = "stack-top"
}
