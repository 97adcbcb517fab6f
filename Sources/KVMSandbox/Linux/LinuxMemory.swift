import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Memory permissions: `mprotect` changes the guest's page tables for real, keeping W^X (no page
/// writable and executable at once; execute only in the program's image, in files from read-only
/// grants, and in anonymous mappings flipped from RW to RX, as JITs do; never by `mmap` itself).
/// `SandboxConfiguration.allowJIT` lifts W^X for anonymous memory (V8 maps code RWX).
extension LinuxPersonality {
    /// `mmap(hint, length, protection, flags, fd, offset)`: anonymous fixed mappings and files
    /// here, executable anonymous memory for JITs only, other anonymous memory the built-in's.
    func mapMemory(_ call: HostCall) throws -> HostCallEffect {
        let (protection, flags) = (call[2], call[3])
        let anonymous = flags & 0x20 != 0
        if anonymous, flags & (0x10 | 0x100000) != 0 {                // anonymous MAP_FIXED(_NOREPLACE)
            return mapFixed(call[0], length: call[1], protection: protection, replace: flags & 0x10 != 0)
        }
        if anonymous, protection & 4 != 0 {                            // anonymous and executable: JITs only
            guard allowJIT else { return refuseExecutable() }
            let start = builtins.mmap(length: call[1], protection: protection & ~4, flags: flags, hint: call[0])
            guard start >= 0, let size = PageSize.alignUp(call[1]) else { return .value(start) }
            if case .value(let error) = protect(UInt64(start), length: size, protection: protection), error < 0 { return .value(error) }
            return .value(start)
        }
        if flags & 0x01 != 0, protection & 2 != 0 {                    // MAP_SHARED(_VALIDATE), writable: shared memory
            if anonymous { return mapShared(call[0], length: call[1], protection: protection, flags: flags, path: nil, offset: 0) }
            guard let file = state.files[call.descriptor(4)] else { return Self.fail(.badFileDescriptor) }
            if case .memoryFile(let path) = file.kind {
                guard file.readable, file.writable else { return Self.fail(.permissionDenied) }
                return mapShared(call[0], length: call[1], protection: protection, flags: flags, path: path, offset: call[5])
            }
        }
        if !anonymous {
            return try mapFile(call[0], length: call[1], protection: protection, flags: flags, fd: call.descriptor(4), offset: call[5])
        }
        return try builtins.handle(call)
    }

    /// `munmap(address, length)`: the built-in's, after forgetting file mappings in the range.
    func unmapMemory(_ call: HostCall) throws -> HostCallEffect {
        if call[0] % PageSize.bytes == 0, let size = PageSize.alignUp(call[1]) {
            guard releaseSharedPages(call[0], size) else { return Self.fail(.noMemory) }
            forgetFileMappings(call[0], size)
        }
        return try builtins.handle(call)
    }

    /// `madvise(address, length, advice)`: MADV_DONTNEED zeroes the guest's writable pages; the
    /// rest is advice.
    func adviseMemory(_ address: UInt64, length: UInt64, advice: UInt64) -> HostCallEffect {
        guard address % PageSize.bytes == 0 else { return Self.fail(.invalidArgument) }
        if advice == 4, let size = PageSize.alignUp(length) {  // MADV_DONTNEED zeroes private anonymous pages
            let (end, overflow) = address.addingReportingOverflow(size)
            guard !overflow, end <= X86PageTables.userAddressLimit else { return Self.fail(.invalidArgument) }
            // Only the mapped pages are visited (a 64 TiB range of nothing costs nothing), and only
            // the guest's own writable ones are zeroed, never a host page (CPL 0 stacks).
            var writable: [UInt64] = []
            space.tables.forEachLeaf(from: address, to: end, memory: space.memory) { page, entry in
                if entry & X86PageTables.writable != 0, entry & X86PageTables.user != 0 { writable.append(page) }
            }
            // Shared memory keeps its contents (Linux drops only this process's view of them).
            if !space.memory.overlays.isEmpty { writable.removeAll { containsSharedPages($0, PageSize.bytes) } }
            for page in writable { space.zeroMapped(page, length: PageSize.bytes) }
        }
        return .value(0)
    }

    /// mremap of anonymous memory in the mmap region (glibc's realloc of large blocks): shrinking
    /// in place; growing by a new mapping, a copy and an unmap when `MREMAP_MAYMOVE` allows it
    /// (else `ENOMEM`, as when Linux cannot grow in place). `MREMAP_FIXED` is not offered.
    func remap(_ address: UInt64, oldLength: UInt64, newLength: UInt64, flags: UInt64) throws -> HostCallEffect {
        let mayMove: UInt64 = 1
        guard address % PageSize.bytes == 0, flags & ~mayMove == 0, newLength > 0,
              let oldSize = PageSize.alignUp(oldLength), let newSize = PageSize.alignUp(newLength), oldSize > 0 else {
            return Self.fail(.invalidArgument)
        }
        guard builtins.ownsMappings(address, oldSize) else { return Self.fail(.invalidArgument) }
        guard !containsSharedPages(address, oldSize) else { return Self.fail(.invalidArgument) }  // shared memory does not move
        var page = address
        while page < address + oldSize {
            guard space.isMapped(page) else { return Self.fail(.invalidArgument) }  // only memory that is there
            page += PageSize.bytes
        }
        if newSize <= oldSize {
            if newSize < oldSize { _ = try builtins.handle(HostCall(number: 11, arguments: [address + newSize, oldSize - newSize, 0, 0, 0, 0],
                                                                     memory: GuestMemoryView(space: space))) }
            return .value(Int64(address))
        }
        guard flags & mayMove != 0 else { return Self.fail(.noMemory) }
        let new = builtins.mmap(length: newSize, protection: 3, flags: 0x22)
        guard new >= 0 else { return .value(new) }
        var copied: UInt64 = 0
        while copied < oldSize {
            let chunk = min(oldSize - copied, 1 << 20)
            try space.hostWrite(try space.hostRead(address + copied, count: Int(chunk)), at: UInt64(new) + copied)
            copied += chunk
        }
        _ = try builtins.handle(HostCall(number: 11, arguments: [address, oldSize, 0, 0, 0, 0], memory: GuestMemoryView(space: space)))
        forgetFileMappings(address, oldSize)
        return .value(new)
    }

    /// Anonymous MAP_FIXED inside the guest's own mmap region (Go maps parts of its PROT_NONE
    /// reservations this way; ld.so maps a library's bss): fresh zero pages with the protection
    /// asked for. Anywhere else (the image, heap, stack, stub and system pages) is refused with `ENOMEM`.
    func mapFixed(_ address: UInt64, length: UInt64, protection: UInt64, replace: Bool) -> HostCallEffect {
        guard address % PageSize.bytes == 0, protection & ~7 == 0, length > 0 else { return Self.fail(.invalidArgument) }
        guard protection & 4 == 0 || allowJIT else { return refuseExecutable() }  // no executable anonymous memory
        guard let size = PageSize.alignUp(length) else { return Self.fail(.noMemory) }
        switch placeFixed(address, size: size, permissions: protection == 0 ? nil : Self.permissions(protection), replace: replace) {
        case .failure(let error): return Self.fail(error)
        case .success:
            forgetFileMappings(address, size)
            return .value(Int64(address))
        }
    }

    /// Makes `[address, address + size)` (inside the mmap region) fresh zero pages with
    /// `permissions`, or reserved (no pages) when `permissions` is nil. Existing pages are
    /// zeroed and re-protected; `replace == false` (MAP_FIXED_NOREPLACE) refuses any. (Pages that
    /// lose permissions are noted by `AddressSpace.protect`, and their translations dropped.)
    func placeFixed(_ address: UInt64, size: UInt64, permissions: PagePermissions?, replace: Bool) -> Result<Void, Errno> {
        guard builtins.ownsMappings(address, size) else { return .failure(.noMemory) }
        let end = address + size
        if replace, !releaseSharedPages(address, size) { return .failure(.noMemory) }
        if !replace {
            var occupied = false
            space.tables.forEachLeaf(from: address, to: end, memory: space.memory) { _, _ in occupied = true }
            if occupied { return .failure(.fileExists) }
        }
        guard let permissions else {
            // A reservation: only pages already there change (a 1 TiB one visits nothing else).
            var mapped: [UInt64] = []
            space.tables.forEachLeaf(from: address, to: end, memory: space.memory) { page, _ in mapped.append(page) }
            for page in mapped {
                space.zeroMapped(page, length: PageSize.bytes)
                do { try space.protect(page, [.supervisor]) } catch { return .failure(.noMemory) }
            }
            builtins.claim(address, length: size)
            return .success(())
        }
        var page = address
        while page < end {
            do {
                if space.isMapped(page) {
                    space.zeroMapped(page, length: PageSize.bytes)
                    try space.protect(page, permissions)
                } else {
                    try space.mapNew(page, length: PageSize.bytes, permissions)
                }
            } catch {
                return .failure(.noMemory)
            }
            page += PageSize.bytes
        }
        builtins.claim(address, length: size)
        return .success(())
    }

    /// `EACCES` for memory that would be writable and executable at once, or executable
    /// anonymous memory, without `SandboxConfiguration.allowJIT`; counted for `--verbose`.
    func refuseExecutable() -> HostCallEffect {
        refusedExecutable += 1
        return Self.fail(.permissionDenied)
    }

    /// Page permissions for PROT_* bits. PROT_NONE pages stay in the tables for the host but are
    /// supervisor-only, so every guest access faults (x86 has no "present but unreadable" for user pages).
    static func permissions(_ protection: UInt64) -> PagePermissions {
        var permissions: PagePermissions = []
        if protection & 1 != 0 || protection & 4 != 0 { permissions.insert(.read) }
        if protection & 2 != 0 { permissions.formUnion([.read, .write]) }
        if protection & 4 != 0 { permissions.insert(.execute) }
        return permissions.isEmpty ? [.supervisor] : permissions
    }

    /// A private mapping of a regular file: pages with the file's bytes copied in (the rest of
    /// the last page zero), anywhere in the mmap region or, with MAP_FIXED, at the address asked
    /// (ld.so places each segment of a library this way). Shared writable mappings are not
    /// offered (`ENODEV`); a shared read-only one is a private copy. Executable only for files
    /// opened through a read-only grant, and never writable and executable at once.
    func mapFile(_ hint: UInt64, length: UInt64, protection: UInt64, flags: UInt64, fd: Int64, offset: UInt64) throws -> HostCallEffect {
        guard protection & ~7 == 0, offset % PageSize.bytes == 0, length > 0 else { return Self.fail(.invalidArgument) }
        guard let file = state.files[fd] else { return Self.fail(.badFileDescriptor) }
        guard case .host(let host) = file.kind, file.readable else { return Self.fail(.permissionDenied) }
        let shared = flags & 0x03 == 0x01
        let execute = protection & 4 != 0, write = protection & 2 != 0
        if shared && write { return Self.fail(Errno(rawValue: 19)) }  // ENODEV
        if execute && (write || !file.executable) { return Self.fail(.permissionDenied) }
        guard length <= space.memory.size, let size = PageSize.alignUp(length) else { return Self.fail(.noMemory) }
        let fixed = flags & (0x10 | 0x100000) != 0
        let address: UInt64
        if fixed {
            guard hint % PageSize.bytes == 0 else { return Self.fail(.invalidArgument) }
            switch placeFixed(hint, size: size, permissions: protection == 0 ? nil : Self.permissions(protection), replace: flags & 0x10 != 0) {
            case .failure(let error): return Self.fail(error)
            case .success: address = hint
            }
        } else {
            let start = builtins.mmap(length: size, protection: protection == 0 ? 0 : write ? 3 : 1, flags: 0x22)
            guard start >= 0 else { return .value(start) }
            address = UInt64(start)
        }
        forgetFileMappings(address, size)
        if protection == 0 { return .value(Int64(address)) }
        // The file's bytes, read straight into the new pages; past its end they stay zero.
        _ = try space.readFile(host.fd, offset: offset, into: address, count: size, access: nil)
        // The pages got their final permissions when mapped (the host writes past them), but
        // execute, which anonymous memory never has: adding it drops no cached translation.
        if execute && !fixed {
            var page = address
            while page < address + size {
                try space.protect(page, Self.permissions(protection))
                page += PageSize.bytes
            }
        }
        state.fileMappings.append(FileMapping(start: address, end: address + size, path: file.path, offset: offset,
                                              executable: execute))
        // The pages may be reused ones the guest touched before: drop cached translations.
        return .value(Int64(address))
    }

    /// Drops the record of file mappings over `[address, address + size)` (unmapped or mapped over),
    /// keeping the parts outside it.
    func forgetFileMappings(_ address: UInt64, _ size: UInt64) {
        let end = address &+ size
        guard state.fileMappings.contains(where: { $0.start < end && $0.end > address }) else { return }
        var kept: [FileMapping] = []
        for mapping in state.fileMappings {
            guard mapping.start < end && mapping.end > address else { kept.append(mapping); continue }
            if mapping.start < address {
                var left = mapping
                left.end = address
                kept.append(left)
            }
            if mapping.end > end {
                var right = mapping
                right.offset &+= end - mapping.start
                right.start = end
                kept.append(right)
            }
        }
        state.fileMappings = kept
    }

    /// mprotect: every page in the range must be mapped (else `ENOMEM`, as Linux); PROT_EXEC
    /// only inside the program's image and never with PROT_WRITE (`EACCES`).
    func protect(_ address: UInt64, length: UInt64, protection: UInt64) -> HostCallEffect {
        guard address % PageSize.bytes == 0, protection & ~7 == 0 else { return Self.fail(.invalidArgument) }
        guard let size = PageSize.alignUp(length) else { return Self.fail(.noMemory) }
        let (end, overflow) = address.addingReportingOverflow(size)
        guard !overflow, end <= X86PageTables.userAddressLimit else { return Self.fail(.noMemory) }
        if size == 0 { return .value(0) }
        let execute = protection & 4 != 0, write = protection & 2 != 0
        if execute && write && !allowJIT { return refuseExecutable() }
        // Execute: in the program's image, or a JIT's flip of its own mmap'd memory from RW to RX
        // (never both at once). The heap, the stack and the host's pages never become executable.
        let inImage = imageRanges.contains { address >= $0.lowerBound && end <= $0.upperBound }
        let inMappings = builtins.ownsMappings(address, size)
        if execute && !inImage && !inMappings { return Self.fail(.permissionDenied) }
        // Shared memory never becomes executable: another process could write it meanwhile.
        if execute && containsSharedPages(address, size) { return refuseExecutable() }
        // Every page must be mapped or reserved (PROT_NONE among the mappings), as Linux wants.
        // Inside the guest's own mappings that holds by construction; elsewhere the walk stops at
        // the first hole, so it never visits more pages than memory holds.
        var page = address
        if !inMappings {
            while page < end {
                guard space.isMapped(page) || builtins.ownsMappings(page, PageSize.bytes) else { return Self.fail(.noMemory) }
                page += PageSize.bytes
            }
        }
        // The host's pages (the GDT, IDT, TSS and CPL 0 stacks, which are supervisor-only; the
        // stubs, mailbox, doorbell, parking page and vDSO) keep the permissions the host gave
        // them: mprotect must never make a supervisor page the guest's, nor the host's code or
        // clock data writable. (A range check, not a walk: a range may span a terabyte.)
        if GuestLayout.overlapsHostPages(address, end) { return Self.fail(.permissionDenied) }
        let permissions = Self.permissions(protection)
        if protection == 0 {
            // PROT_NONE: only the pages that are there change.
            var mapped: [UInt64] = []
            space.tables.forEachLeaf(from: address, to: end, memory: space.memory) { page, _ in mapped.append(page) }
            for page in mapped {
                do { try space.protect(page, permissions) } catch { return Self.fail(.noMemory) }
            }
            return .value(0)
        }
        page = address
        while page < end {
            do {
                if space.isMapped(page) {
                    try space.protect(page, permissions)
                } else if protection != 0 {
                    try space.mapNew(page, length: PageSize.bytes, permissions)  // a reserved page made accessible
                }
            } catch {
                return Self.fail(.noMemory)
            }
            page += PageSize.bytes
        }
        return .value(0)
    }
}
