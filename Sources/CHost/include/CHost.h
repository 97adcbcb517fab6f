#ifndef CHOST_H
#define CHOST_H
// The host's Linux calls Swift's Glibc module does not show (no wrapper, or declared only with
// _GNU_SOURCE), and the CPU hints the pollers need. Nothing of KVM: that is CKVM's.
#include <stddef.h>

/// memfd_create(name, MFD_CLOEXEC): the backing of guest memory (glibc hides it from Swift).
int chost_memfd_create(const char *name);

/// getrandom(2) (glibc declares it in <sys/random.h>, which Swift's Glibc module lacks).
long chost_getrandom(void *buffer, unsigned long length);
/// fallocate(2) (glibc declares it only with _GNU_SOURCE).
long chost_fallocate(int fd, int mode, long offset, long length);
/// fstatfs(2) into the kernel's 120-byte `struct statfs` (15 64-bit words on x86-64).
long chost_fstatfs(int fd, void *buffer);
/// copy_file_range(2) between two host files at explicit offsets (advanced by what was copied).
long chost_copy_file_range(int input, long long *input_offset, int output, long long *output_offset, unsigned long length);
/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) (<sys/eventfd.h> is not in Swift's Glibc module).
int chost_eventfd(void);
/// gettid(2): the calling thread's id.
long chost_gettid(void);

/// openat2(2) with `RESOLVE_*` flags (no glibc wrapper): how guest paths are opened beneath a
/// granted directory. Returns an fd, or -1 with errno.
int chost_openat2(int dirfd, const char *path, unsigned long long flags, unsigned long long mode,
                 unsigned long long resolve);
/// getdents64(2) (no wrapper Swift can see): directory entries in Linux's own record format.
long chost_getdents64(int fd, void *buffer, unsigned long length);

/// The host CPU's CPUID leaf/subleaf: out[0..3] = EAX, EBX, ECX, EDX.
void chost_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int out[4]);

/// CPUs this process may run on: CPU_COUNT of sched_getaffinity (glibc hides both from Swift).
int chost_available_cpus(void);
/// Pins the calling thread to one CPU (sched_setaffinity), for tests and benchmarks; 0 or -1.
int chost_pin_to_cpu(int cpu);
/// Lets the calling thread run on every CPU again; 0 or -1.
int chost_unpin(void);
/// The CPU's time-stamp counter (`rdtsc`): the clock the guest's vDSO reads too.
static inline unsigned long long chost_rdtsc(void) { return __builtin_ia32_rdtsc(); }
/// The spin-wait hint (`pause`) for a thread polling memory another CPU writes.
static inline void chost_cpu_relax(void) { __builtin_ia32_pause(); }

#endif
