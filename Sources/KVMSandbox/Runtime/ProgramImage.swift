#if canImport(Glibc)
import Glibc
#endif

/// What a fresh sandbox loads, as the kernel's `execve` would: the program and, for a dynamic
/// one, the dynamic loader its PT_INTERP names, placed just below the mmap region.
struct ProgramImage {
    /// The executable.
    let program: LoadedProgram
    /// The dynamic loader (`ld-linux-x86-64.so.2`), nil for a static program.
    let interpreter: LoadedProgram?
    /// The top of the anonymous-mmap region: below the loader when there is one.
    let mmapTop: UInt64

    /// Where the vCPU starts: the loader's entry for a dynamic program, else the program's.
    var entry: UInt64 { interpreter?.entry ?? program.entry }

    /// Loads `elf` (and its loader, read through `fileSystem`, so the guest's view decides which
    /// file that is) into `space`, below `top` (the highest address the mmap region may use).
    static func load(_ elf: ELFFile, into space: AddressSpace, fileSystem: FileSystemView, top: UInt64,
                     pieBase: UInt64 = GuestLayout.pieBase, deadline: UInt64?) throws(SandboxError) -> ProgramImage {
        let program = try ELFLoader.load(elf, into: space, pieBase: pieBase, deadline: deadline)
        guard let path = elf.interpreter else { return ProgramImage(program: program, interpreter: nil, mmapTop: top) }
        let loaderELF = try readLoader(path, fileSystem: fileSystem)
        var loader = try ELFLoader.load(loaderELF, into: space, at: .below(top), deadline: deadline)
        loader.path = path
        // A guard page between the loader and the first mapping below it.
        return ProgramImage(program: program, interpreter: loader, mmapTop: loader.imageRange.lowerBound - PageSize.bytes)
    }

    /// The loader's ELF, opened as the guest would open it (grants, symlinks followed inside them).
    static func readLoader(_ path: String, fileSystem: FileSystemView) throws(SandboxError) -> ELFFile {
        let fd: Int32
        switch fileSystem.open(FileSystemView.normalize(path, cwd: "/"), flags: O_RDONLY, mode: 0) {
        case .success(let opened): fd = opened
        case .failure(let error):
            throw .invalidConfiguration("the program's dynamic loader \(path) cannot be opened in the guest's view of the files: \(error)")
        }
        defer { close(fd) }
        let bytes: [UInt8]
        do { bytes = try readFile(descriptor: fd, limit: 64 << 20) } catch {
            throw .invalidConfiguration("cannot read the dynamic loader \(path): \(error)")
        }
        do { return try ELFFile(bytes: bytes) } catch { throw .invalidELF(error) }
    }
}

/// The files a dynamic program needs to start, granted read-only by default
/// (`SandboxConfiguration.systemLibraries`): the library directories, `/etc/ld.so.cache`, the
/// program itself and its loader. `/etc/passwd`, `/home`, `/root` and the rest stay invisible.
public enum SystemLibraries {
    /// The directories granted read-only (those that exist on the host).
    public static let directories = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache"]

    /// Grants for a dynamic program loaded from `hostPath` and seen by the guest at `guestPath`,
    /// for those paths that exist and that `existing` grants do not already cover.
    static func grants(program hostPath: String?, guestPath: String?, interpreter: String,
                       existing: [FileGrant]) -> [FileGrant] {
        var grants: [FileGrant] = []
        func covered(_ path: String) -> Bool { SystemView.covered(path, by: existing + grants) }
        func exists(_ path: String) -> Bool { SystemView.exists(path) }
        for directory in directories where exists(directory) && !covered(directory) {
            grants.append(FileGrant(hostPath: directory))
        }
        if let hostPath, let guestPath, guestPath.hasPrefix("/"), exists(hostPath),
           !covered(FileSystemView.normalize(guestPath, cwd: "/")) {
            grants.append(FileGrant(hostPath: hostPath, guestPath: guestPath))
        }
        let loader = FileSystemView.normalize(interpreter, cwd: "/")
        if exists(loader), !covered(loader) { grants.append(FileGrant(hostPath: loader)) }
        return grants
    }
}
