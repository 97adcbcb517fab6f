// Computed in C, never in Swift or C++: see PLATFORM.md on flexible arrays.
#define _GNU_SOURCE
#include "CKVM.h"
#include <cpuid.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <linux/openat2.h>
#include <unistd.h>

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

int ckvm_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }
size_t ckvm_sizeof_kvm_msrs(void) { return sizeof(struct kvm_msrs); }
size_t ckvm_offsetof_msr_list_entries(void) { return offsetof(struct ckvm_msr_list, entries); }

long ckvm_getrandom(void *buffer, unsigned long length) { return getrandom(buffer, length, 0); }

int ckvm_openat2(int dirfd, const char *path, unsigned long long flags, unsigned long long mode,
                 unsigned long long resolve) {
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

long ckvm_getdents64(int fd, void *buffer, unsigned long length) {
    return syscall(SYS_getdents64, fd, buffer, length);
}

void ckvm_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int out[4]) {
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

int ckvm_available_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return CPU_COUNT(&set);
}

int ckvm_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int ckvm_unpin(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

_Static_assert(offsetof(struct ckvm_cpuid, entries) == offsetof(struct kvm_cpuid2, entries), "ckvm_cpuid matches kvm_cpuid2");

long ckvm_fallocate(int fd, int mode, long offset, long length) { return syscall(SYS_fallocate, fd, mode, offset, length); }

long ckvm_fstatfs(int fd, void *buffer) { return syscall(SYS_fstatfs, fd, buffer); }

long ckvm_gettid(void) { return syscall(SYS_gettid); }
