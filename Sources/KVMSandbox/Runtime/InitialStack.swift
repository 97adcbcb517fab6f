/// Builds the System V x86-64 initial process stack: argc, argv, envp, auxv, and the strings and
/// random bytes they point to, so a Linux-compatible libc (musl's crt1) starts as it would on Linux.
enum InitialStack {
    /// Auxiliary-vector keys.
    enum Key: UInt64 {
        case null = 0, phdr = 3, phent = 4, phnum = 5, pagesz = 6, base = 7, flags = 8, entry = 9
        case uid = 11, euid = 12, gid = 13, egid = 14, platform = 15, hwcap = 16, clktck = 17
        case secure = 23, random = 25, hwcap2 = 26, execfn = 31, sysinfoEHDR = 33, minsigstksz = 51
    }

    /// Writes the stack below `top` and returns the initial stack pointer (pointing at argc).
    /// `vdso`: where the vDSO's ELF header is (`AT_SYSINFO_EHDR`), when there is one.
    static func build(in space: AddressSpace, top: UInt64, size: UInt64, arguments: [String],
                      environment: [String], image: ProgramImage, vdso: UInt64? = nil) throws(SandboxError) -> UInt64 {
        let program = image.program
        var cursor = top
        var data: [(address: UInt64, bytes: [UInt8])] = []
        func push(_ bytes: [UInt8]) -> UInt64 {
            cursor -= UInt64(bytes.count)
            data.append((cursor, bytes))
            return cursor
        }
        let stringBytes = (arguments + environment).reduce(0) { $0 + $1.utf8.count + 1 }
        guard stringBytes + 16 * (arguments.count + environment.count) < Int(size / 4) else {
            throw .invalidConfiguration("arguments and environment (\(stringBytes) bytes) exceed a quarter of the \(size / 1024) KiB stack")
        }
        let random = push((0..<16).map { _ in UInt8.random(in: 0...255) })
        let platform = push(Array("x86_64".utf8) + [0])
        let argumentPointers = arguments.map { push(Array($0.utf8) + [0]) }
        let environmentPointers = environment.map { push(Array($0.utf8) + [0]) }

        let auxv: [(Key, UInt64)] = [
            (.phdr, program.programHeaderAddress), (.phent, 56), (.phnum, UInt64(program.programHeaderCount)),
            (.pagesz, PageSize.bytes), (.base, image.interpreter?.base ?? 0), (.flags, 0), (.entry, program.entry),
            (.uid, 0), (.euid, 0), (.gid, 0), (.egid, 0), (.secure, 0),
            (.hwcap, UInt64(X86CPUIdentity.featureFlags)), (.hwcap2, 0), (.minsigstksz, X86CPUIdentity.minimumSignalStackSize),
            (.clktck, 100),
            (.platform, platform), (.random, random), (.execfn, argumentPointers.first ?? 0),
        ] + (vdso.map { [(Key.sysinfoEHDR, $0)] } ?? []) + [(.null, 0)]
        var words: [UInt64] = [UInt64(arguments.count)]
        words += argumentPointers + [0] + environmentPointers + [0]
        for (key, value) in auxv { words += [key.rawValue, value] }

        cursor &= ~15
        if words.count % 2 == 1 { cursor -= 8 }  // argc must sit on a 16-byte boundary
        cursor -= UInt64(words.count * 8)
        data.append((cursor, [UInt8](littleEndianWords: words)))
        for (address, bytes) in data {
            do { try space.hostWrite(bytes, at: address) } catch {
                throw .invalidConfiguration("the initial stack does not fit into \(size / 1024) KiB")
            }
        }
        return cursor
    }
}
