// Exercises the exitless `syscall` entry (the user one on PVM, the CPL 0 one on hardware KVM)
// with calls the polling thread serves (getppid, clock_gettime, open/read/close of a granted
// file) and calls it sends back through the exit (mmap, munmap, brk), checking results and
// that the direction flag the guest set before `syscall` is still set after it (the entries
// may change only the arithmetic flags, which compilers never keep across a `syscall`; the
// CPL 0 one restores them all with `sysretq`).
// Usage: exitless-entry FILE (at least 16 bytes); prints "ok" and exits 0.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// getppid with DF set around the instruction; returns the flags seen after it.
static uint64_t getppid_with_flags(long *result) {
    uint64_t flags;
    long value;
    __asm__ volatile("std\n\tsyscall\n\tpushfq\n\tpopq %1\n\tcld"
                     : "=a"(value), "=r"(flags) : "a"((long)SYS_getppid) : "rcx", "r11", "memory", "cc");
    *result = value;
    return flags;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long first = syscall(SYS_getppid);
    for (int i = 0; i < 1000; i++) {
        if (syscall(SYS_getppid) != first) { printf("getppid changed\n"); return 1; }
    }
    for (int i = 0; i < 100; i++) {
        long value;
        uint64_t flags = getppid_with_flags(&value);
        if (value != first || !(flags & 0x400)) { printf("flags 0x%lx lost DF\n", (unsigned long)flags); return 1; }
    }
    char expected[16], buffer[16];
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || read(fd, expected, sizeof expected) != sizeof expected) { printf("cannot read %s\n", argv[1]); return 1; }
    for (int i = 0; i < 200; i++) {
        struct timespec now;
        if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) return 1;
        if (pread(fd, buffer, sizeof buffer, 0) != sizeof buffer || memcmp(buffer, expected, sizeof buffer)) { printf("pread differs\n"); return 1; }
        char *page = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED) return 1;
        page[4096] = (char)i;
        munmap(page, 8192);
    }
    close(fd);
    printf("ok\n");
    return 0;
}
