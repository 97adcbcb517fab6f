import CHost
import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Which kind of KVM serves `/dev/kvm`.
public enum KVMPlatform: String, Sendable, Codable {
    /// PVM (`kvm_pvm`): paravirtualized, no hardware virtualization; CPL 0 guest code is emulated.
    case pvm
    /// Hardware KVM on Intel VMX (`kvm_intel`).
    case vmx
    /// Hardware KVM on AMD SVM (`kvm_amd`).
    case svm
    /// A KVM module this library does not recognise.
    case unknown

    /// Detects the platform from the loaded kernel modules, then the CPU flags.
    public static func detect() -> KVMPlatform {
        func loaded(_ module: String) -> Bool { access("/sys/module/\(module)", F_OK) == 0 }
        if loaded("kvm_pvm") { return .pvm }
        if loaded("kvm_intel") { return .vmx }
        if loaded("kvm_amd") { return .svm }
        return .unknown
    }

    /// Whether guest exceptions reach the host as `KVM_EXIT_SHUTDOWN` with the vector intact (PVM)
    /// rather than as a triple fault that loses it (hardware KVM without an IDT).
    public var reportsExceptionsWithoutIDT: Bool { self == .pvm }
    /// Whether `syscall` from CPL 3 enters CPL 0 at LSTAR (hardware) or stays at CPL 3 (PVM).
    public var syscallEntersCPL0: Bool { self != .pvm }
}

/// The KVM subsystem: an open `/dev/kvm`. Creates VMs; answers capability queries.
///
/// Thread-safe: the file descriptor is only used for ioctls that the kernel serialises.
public final class KVMSystem: Sendable {
    /// The path that was opened.
    public let path: String
    /// `KVM_GET_API_VERSION` (always 12 on kernels this library supports).
    public let apiVersion: Int32
    /// The size of the per-vCPU `kvm_run` mapping.
    public let vcpuMmapSize: Int
    /// Which kind of KVM this is.
    public let platform: KVMPlatform
    let fd: FileDescriptor
    /// `KVM_GET_SUPPORTED_CPUID`'s answer, once asked.
    private let cpuidCache = HostMutex<Result<[kvm_cpuid_entry2], KVMError>?>(nil)
    /// Which optional vCPU state components (XSAVE, XCRs, debug registers) this KVM can save.
    var stateCapabilities: VCPUStateCapabilities { VCPUStateCapabilities(system: self) }

    /// The capabilities the sandbox cannot run without, with their names for error messages.
    static let requiredCapabilities: [(capability: Int32, name: String, minimum: Int32)] = [
        (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", 1),
        (KVM_CAP_SYNC_REGS, "KVM_CAP_SYNC_REGS (regs + events)", Int32(KVM_SYNC_X86_REGS | KVM_SYNC_X86_EVENTS)),
        (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", 1),
    ]

    /// Opens `path` and checks the API version and the capabilities the sandbox needs.
    public init(path: String = "/dev/kvm") throws(SandboxError) {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec])
        } catch let error as Errno {
            switch error {
            case .noSuchFileOrDirectory: throw .kvmNotFound(path: path)
            case .permissionDenied, .notPermitted: throw .kvmPermissionDenied(path: path)
            default: throw .kvmOpenFailed(path: path, errno: error)
            }
        } catch {
            throw .kvmOpenFailed(path: path, errno: .ioError)
        }
        self.path = path
        self.fd = fd
        self.platform = KVMPlatform.detect()
        do {
            apiVersion = try kvmIoctl(fd, KVMRequest.getAPIVersion, 0, "KVM_GET_API_VERSION")
            vcpuMmapSize = Int(try kvmIoctl(fd, KVMRequest.getVCPUMmapSize, 0, "KVM_GET_VCPU_MMAP_SIZE"))
        } catch {
            try? fd.close()
            throw .kvm(error)
        }
        guard apiVersion == KVM_API_VERSION else {
            try? fd.close()
            throw .unsupportedAPIVersion(apiVersion)
        }
        for required in Self.requiredCapabilities {
            let value = ckvmIoctl(fd.rawValue, KVMRequest.checkExtension, UInt(required.capability))
            if value < required.minimum || (required.minimum > 1 && value & required.minimum != required.minimum) {
                try? fd.close()
                throw .missingCapability(name: required.name)
            }
        }
    }

    deinit { try? fd.close() }

    /// `KVM_CHECK_EXTENSION`: 0 when the capability is absent, otherwise a capability-specific value.
    public func checkExtension(_ capability: Int32) -> Int32 {
        max(0, ckvmIoctl(fd.rawValue, KVMRequest.checkExtension, UInt(capability)))
    }

    /// `KVM_GET_SUPPORTED_CPUID`: the CPUID leaves this KVM can give a guest (read once).
    func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        try supportedCPUIDResult.get()
    }

    private var supportedCPUIDResult: Result<[kvm_cpuid_entry2], KVMError> {
        cpuidCache.withLock { cached in
            if let cached { return cached }
            var table = chost_cpuid()
            table.nent = 256
            let result: Result<[kvm_cpuid_entry2], KVMError> = Result { () throws(KVMError) in
                try kvmIoctl(fd, KVMRequest.getSupportedCPUID, &table, "KVM_GET_SUPPORTED_CPUID")
                return withUnsafeBytes(of: &table.entries) { raw in
                    Array(raw.bindMemory(to: kvm_cpuid_entry2.self).prefix(Int(min(table.nent, 256))))
                }
            }
            cached = result
            return result
        }
    }

    /// Creates an empty VM (`KVM_CREATE_VM`).
    func createVM() throws(KVMError) -> VirtualMachine {
        let vmfd = try kvmIoctl(fd, KVMRequest.createVM, 0, "KVM_CREATE_VM")
        return VirtualMachine(fd: FileDescriptor(rawValue: vmfd), system: self)
    }

    private static let sharedResult: Result<KVMSystem, SandboxError> = Result { () throws(SandboxError) in
        try KVMSystem()
    }

    /// The process-wide `/dev/kvm`, opened once on first use.
    public static func shared() throws(SandboxError) -> KVMSystem {
        try sharedResult.get()
    }
}
