// The host calls CHost.h declares.
#define _GNU_SOURCE
#include "CHost.h"
#include <cpuid.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <linux/openat2.h>
#include <unistd.h>

int chost_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

long chost_getrandom(void *buffer, unsigned long length) { return getrandom(buffer, length, 0); }

int chost_openat2(int dirfd, const char *path, unsigned long long flags, unsigned long long mode,
                 unsigned long long resolve) {
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

long chost_fallocate(int fd, int mode, long offset, long length) { return syscall(SYS_fallocate, fd, mode, offset, length); }

long chost_fstatfs(int fd, void *buffer) { return syscall(SYS_fstatfs, fd, buffer); }

long chost_gettid(void) { return syscall(SYS_gettid); }

long chost_copy_file_range(int input, long long *input_offset, int output, long long *output_offset, unsigned long length) {
    return syscall(SYS_copy_file_range, input, input_offset, output, output_offset, length, 0);
}

long chost_getdents64(int fd, void *buffer, unsigned long length) {
    return syscall(SYS_getdents64, fd, buffer, length);
}

void chost_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int out[4]) {
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

int chost_available_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return CPU_COUNT(&set);
}

int chost_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int chost_unpin(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int chost_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }
