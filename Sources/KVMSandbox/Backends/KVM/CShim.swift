import CKVM
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// Thin Swift names for the C shim, so the rest of the KVM layer reads as Swift.

@inline(__always) func ckvmIoctl(_ fd: Int32, _ request: UInt, _ argument: UInt) -> Int32 {
    ckvm_ioctl(fd, request, argument)
}

@inline(__always) func ckvmIoctlPointer(_ fd: Int32, _ request: UInt, _ pointer: UnsafeMutableRawPointer) -> Int32 {
    ckvm_ioctl_ptr(fd, request, pointer)
}

@inline(__always) func systemErrno() -> Int32 { errno }

/// The ioctl request numbers, computed by the C compiler from <linux/kvm.h>.
enum KVMRequest {
    static let getAPIVersion = CKVM_GET_API_VERSION
    static let createVM = CKVM_CREATE_VM
    static let checkExtension = CKVM_CHECK_EXTENSION
    static let getVCPUMmapSize = CKVM_GET_VCPU_MMAP_SIZE
    static let createVCPU = CKVM_CREATE_VCPU
    static let setUserMemoryRegion = CKVM_SET_USER_MEMORY_REGION
    static let getDirtyLog = CKVM_GET_DIRTY_LOG
    static let enableCap = CKVM_ENABLE_CAP
    static let resetDirtyRings = CKVM_RESET_DIRTY_RINGS
    static let clearDirtyLog = CKVM_CLEAR_DIRTY_LOG
    static let run = CKVM_RUN
    static let getRegs = CKVM_GET_REGS
    static let setRegs = CKVM_SET_REGS
    static let getSRegs = CKVM_GET_SREGS
    static let setSRegs = CKVM_SET_SREGS
    static let getVCPUEvents = CKVM_GET_VCPU_EVENTS
    static let setVCPUEvents = CKVM_SET_VCPU_EVENTS
    static let setMSRs = CKVM_SET_MSRS
    static let getMSRs = CKVM_GET_MSRS
    static let getTSCKHz = CKVM_GET_TSC_KHZ
    static let getFPU = CKVM_GET_FPU
    static let setFPU = CKVM_SET_FPU
    static let getXSave = CKVM_GET_XSAVE
    static let setXSave = CKVM_SET_XSAVE
    static let getXCRs = CKVM_GET_XCRS
    static let setXCRs = CKVM_SET_XCRS
    static let getDebugRegs = CKVM_GET_DEBUGREGS
    static let setDebugRegs = CKVM_SET_DEBUGREGS
    static let getSupportedCPUID = CKVM_GET_SUPPORTED_CPUID
    static let setCPUID2 = CKVM_SET_CPUID2
}

