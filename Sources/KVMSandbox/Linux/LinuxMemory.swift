import SystemPackage

/// Memory permissions: `mprotect` changes the guest's page tables for real, keeping W^X (no page
/// writable and executable at once; execute only where the program's image had code).
extension LinuxPersonality {
    func handleMemory(_ call: HostCall) throws -> HostCallEffect? {
        switch call.number {
        case 10: return protect(call[0], length: call[1], protection: call[2])
        case 28:                                    // madvise
            guard call[0] % PageSize.bytes == 0 else { return Self.fail(.invalidArgument) }
            if call[2] == 4, let size = PageSize.alignUp(call[1]) {  // MADV_DONTNEED zeroes private anonymous pages
                let (end, overflow) = call[0].addingReportingOverflow(size)
                guard !overflow, end <= X86PageTables.userAddressLimit else { return Self.fail(.invalidArgument) }
                var page = call[0]
                while page < end {
                    if let entry = space.tables.leafEntry(page, memory: space.memory), entry & X86PageTables.writable != 0 {
                        space.zeroMapped(page, length: PageSize.bytes)
                    }
                    page += PageSize.bytes
                }
            }
            return .value(0)
        default: return nil
        }
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
        if execute && write { return Self.fail(.permissionDenied) }
        if execute && !(address >= imageRange.lowerBound && end <= imageRange.upperBound) {
            return Self.fail(.permissionDenied)
        }
        var page = address
        while page < end {
            guard space.isMapped(page) else { return Self.fail(.noMemory) }
            page += PageSize.bytes
        }
        var permissions: PagePermissions = []
        if protection & 1 != 0 { permissions.insert(.read) }
        if write { permissions.insert(.write) }
        if execute { permissions.insert(.execute) }
        page = address
        while page < end {
            // PROT_NONE: not present to the guest, but the page stays in the tables for the host.
            do { try space.protect(page, permissions) } catch { return Self.fail(.noMemory) }
            page += PageSize.bytes
        }
        return .invalidateTranslations
    }
}
