// Computed in C, never in Swift or C++: see PLATFORM.md on flexible arrays.
#define _GNU_SOURCE
#include "CKVM.h"
#include <sys/ioctl.h>

const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
const unsigned long CKVM_RESET_DIRTY_RINGS = KVM_RESET_DIRTY_RINGS;
const unsigned long CKVM_CLEAR_DIRTY_LOG = KVM_CLEAR_DIRTY_LOG;
const unsigned long CKVM_RUN = KVM_RUN;
const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;

int ckvm_ioctl(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

int ckvm_ioctl_ptr(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

size_t ckvm_sizeof_kvm_run(void) { return sizeof(struct kvm_run); }
size_t ckvm_sizeof_kvm_regs(void) { return sizeof(struct kvm_regs); }
size_t ckvm_sizeof_kvm_sregs(void) { return sizeof(struct kvm_sregs); }
size_t ckvm_sizeof_kvm_vcpu_events(void) { return sizeof(struct kvm_vcpu_events); }
size_t ckvm_sizeof_kvm_userspace_memory_region(void) { return sizeof(struct kvm_userspace_memory_region); }
size_t ckvm_sizeof_kvm_fpu(void) { return sizeof(struct kvm_fpu); }
size_t ckvm_sizeof_kvm_xsave(void) { return sizeof(struct kvm_xsave); }
size_t ckvm_sizeof_kvm_xcrs(void) { return sizeof(struct kvm_xcrs); }
size_t ckvm_sizeof_kvm_debugregs(void) { return sizeof(struct kvm_debugregs); }
size_t ckvm_offsetof_kvm_run_s(void) { return offsetof(struct kvm_run, s); }
size_t ckvm_sizeof_kvm_msrs(void) { return sizeof(struct kvm_msrs); }
size_t ckvm_offsetof_msr_list_entries(void) { return offsetof(struct ckvm_msr_list, entries); }

_Static_assert(offsetof(struct chost_cpuid, entries) == offsetof(struct kvm_cpuid2, entries), "chost_cpuid matches kvm_cpuid2");
