// CKVM: the thin C shim between Swift and <linux/kvm.h>.
//
// It exposes the kernel's KVM structs as they are, the ioctl request numbers
// (function-like macros Swift cannot import), the variadic ioctl(2) call, and
// the struct sizes so a test can check them against Swift's MemoryLayout.
// Nothing else lives here.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stddef.h>

// System ioctls (/dev/kvm).
extern const unsigned long CKVM_GET_API_VERSION;
extern const unsigned long CKVM_CREATE_VM;
extern const unsigned long CKVM_CHECK_EXTENSION;
extern const unsigned long CKVM_GET_VCPU_MMAP_SIZE;
// VM ioctls.
extern const unsigned long CKVM_CREATE_VCPU;
extern const unsigned long CKVM_SET_USER_MEMORY_REGION;
extern const unsigned long CKVM_GET_DIRTY_LOG;
extern const unsigned long CKVM_ENABLE_CAP;
extern const unsigned long CKVM_RESET_DIRTY_RINGS;
extern const unsigned long CKVM_CLEAR_DIRTY_LOG;
// vCPU ioctls.
extern const unsigned long CKVM_RUN;
extern const unsigned long CKVM_GET_REGS;
extern const unsigned long CKVM_SET_REGS;
extern const unsigned long CKVM_GET_SREGS;
extern const unsigned long CKVM_SET_SREGS;
extern const unsigned long CKVM_GET_VCPU_EVENTS;
extern const unsigned long CKVM_SET_VCPU_EVENTS;
extern const unsigned long CKVM_SET_MSRS;
extern const unsigned long CKVM_GET_MSRS;
extern const unsigned long CKVM_GET_TSC_KHZ;
extern const unsigned long CKVM_GET_FPU;
extern const unsigned long CKVM_SET_FPU;
extern const unsigned long CKVM_GET_XSAVE;
extern const unsigned long CKVM_SET_XSAVE;
extern const unsigned long CKVM_GET_XCRS;
extern const unsigned long CKVM_SET_XCRS;
extern const unsigned long CKVM_GET_DEBUGREGS;
extern const unsigned long CKVM_SET_DEBUGREGS;

extern const unsigned long CKVM_GET_SUPPORTED_CPUID;
extern const unsigned long CKVM_SET_CPUID2;

/// struct kvm_cpuid2 with room for 256 entries (kvm_cpuid2 ends in a flexible array).
struct chost_cpuid {
    __u32 nent;
    __u32 padding;
    struct kvm_cpuid_entry2 entries[256];
};

/// struct kvm_msrs with room for a few entries (kvm_msrs ends in a flexible array Swift cannot size).
struct ckvm_msr_list {
    __u32 nmsrs;
    __u32 pad;
    struct kvm_msr_entry entries[8];
};

/// ioctl(2) with an integer argument. Returns -1 and sets errno on failure.
int ckvm_ioctl(int fd, unsigned long request, unsigned long argument);
/// ioctl(2) with a pointer argument. Returns -1 and sets errno on failure.
int ckvm_ioctl_ptr(int fd, unsigned long request, void *argument);


/// sizeof of the structs Swift imports, for layout checks in tests.
size_t ckvm_sizeof_kvm_run(void);
size_t ckvm_sizeof_kvm_regs(void);
size_t ckvm_sizeof_kvm_sregs(void);
size_t ckvm_sizeof_kvm_vcpu_events(void);
size_t ckvm_sizeof_kvm_userspace_memory_region(void);
size_t ckvm_sizeof_kvm_fpu(void);
size_t ckvm_sizeof_kvm_xsave(void);
size_t ckvm_sizeof_kvm_xcrs(void);
size_t ckvm_sizeof_kvm_debugregs(void);
/// offsetof(struct kvm_run, s): where the sync-regs area starts.
size_t ckvm_offsetof_kvm_run_s(void);
/// sizeof(struct kvm_msrs) and offsetof(struct ckvm_msr_list, entries): must agree.
size_t ckvm_sizeof_kvm_msrs(void);
size_t ckvm_offsetof_msr_list_entries(void);

#endif
