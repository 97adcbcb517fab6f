/*
 * kvmsandbox.h: the guest side of the KVMSandbox host-call ABI.
 *
 * A guest is a static x86-64 program built with `kvmsandbox cc` (musl libc, -static). The
 * ordinary libc works: printf, malloc, clock_gettime, exit... (musl's system calls trap to the
 * host, which serves them from the same table as the calls below).
 *
 * Host-call ABI: number in rax, up to six integer arguments in rdi, rsi, rdx, r10, r8, r9 (the
 * Linux system-call order), result in rax; `out %al, $0x42` traps to the host. Results follow
 * the Linux convention: a negative value is -errno (-14 EFAULT for a bad pointer, -38 ENOSYS for
 * an unknown number). Built-in calls use Linux x86-64 system-call numbers; an embedder's own
 * calls start at KS_HOSTCALL_USER (0x1000).
 */
#ifndef KVMSANDBOX_H
#define KVMSANDBOX_H

#ifdef __cplusplus
extern "C" {
#endif

#define KS_HOSTCALL_PORT 0x42

/* Built-in host calls (Linux x86-64 numbers and semantics). */
#define KS_HC_WRITE 1            /* (fd, buf, len) -> bytes written; fd 1 and 2 only */
#define KS_HC_BRK 12             /* (new_end) -> new break, or the old one when refused */
#define KS_HC_CLOCK_GETTIME 228  /* (clock, struct timespec *) -> 0 */
#define KS_HC_EXIT 231           /* (status): does not return */
/* The first number an embedder may register. */
#define KS_HC_READY 0xf00         /* (): initialized; the host may snapshot here. Returns 0 */
#define KS_HOSTCALL_USER 0x1000

/* Make host call `nr` with six arguments. */
static inline long ks_hostcall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) {
    register long r10 __asm__("r10") = a3;
    register long r8 __asm__("r8") = a4;
    register long r9 __asm__("r9") = a5;
    long result;
    __asm__ volatile("outb %%al, %[port]"
                     : "=a"(result)
                     : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9),
                       [port] "i"(KS_HOSTCALL_PORT)
                     : "memory");
    return result;
}

/* Write `len` bytes to the sandbox's stdout (fd 1) or stderr (fd 2). Returns bytes written or -errno. */
static inline long ks_write(int fd, const void *buf, unsigned long len) {
    return ks_hostcall(KS_HC_WRITE, fd, (long)buf, (long)len, 0, 0, 0);
}

/* End the guest at once with `status` (0..255), without running atexit handlers or flushing stdio. */
__attribute__((noreturn)) static inline void ks_exit(int status) {
    ks_hostcall(KS_HC_EXIT, status, 0, 0, 0, 0, 0);
    __builtin_unreachable();
}

/* Nanoseconds on the host's monotonic clock. */
/* Tells the host the program has initialized. Under `Snapshot`, the host freezes the VM here:
 * every fork starts paused at this point, where the host may call the program's functions or
 * let main() continue. Elsewhere it just returns. */
static inline void ks_ready(void) { ks_hostcall(KS_HC_READY, 0, 0, 0, 0, 0, 0); }

static inline long long ks_clock_ns(void) {
    struct { long long sec, nsec; } ts = {0, 0};
    ks_hostcall(KS_HC_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0, 0, 0, 0);
    return ts.sec * 1000000000LL + ts.nsec;
}

#ifdef __cplusplus
}
#endif
#endif
