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
#define KS_HC_READY 0xf00        /* (): initialized; the host may snapshot here. Returns 0 */
#define KS_HC_MAILBOX_WAIT 0xf02 /* (sequence): the result of mailbox request `sequence` */
/* The first number an embedder may register. */
#define KS_HOSTCALL_USER 0x1000

/* The exitless-call mailbox: a page shared with a host polling thread (see the README). */
#define KS_MAILBOX_ADDRESS 0x7ff000002000UL
#define KS_MAILBOX_SPIN 256   /* polls of the answer before falling back to an exit */
struct ks_mailbox {
    volatile unsigned long request;   /* sequence number of the posted call (written last) */
    volatile unsigned long number;
    volatile unsigned long args[6];
    volatile unsigned long response;  /* sequence number of the answered call (host) */
    volatile long result;             /* (host) */
    unsigned long reserved[6];
    volatile unsigned long polling;   /* nonzero while a host thread watches the page (host) */
};

/* A host call by VM exit: number in rax, arguments in rdi, rsi, rdx, r10, r8, r9. */
static inline long ks_hostcall_exit(long nr, long a0, long a1, long a2, long a3, long a4, long a5) {
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

/* Make host call `nr` with six arguments. Embedder calls (KS_HOSTCALL_USER and up) go through
 * the mailbox while a host thread polls it (no VM exit), falling back to an exit when no answer
 * comes within KS_MAILBOX_SPIN polls; everything else is an exit. Same results either way. */
static inline long ks_hostcall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) {
    struct ks_mailbox *box = (struct ks_mailbox *)KS_MAILBOX_ADDRESS;
    if (nr >= KS_HOSTCALL_USER && __atomic_load_n(&box->polling, __ATOMIC_RELAXED)) {
        unsigned long sequence = box->request + 1;
        box->number = (unsigned long)nr;
        box->args[0] = (unsigned long)a0; box->args[1] = (unsigned long)a1; box->args[2] = (unsigned long)a2;
        box->args[3] = (unsigned long)a3; box->args[4] = (unsigned long)a4; box->args[5] = (unsigned long)a5;
        __atomic_store_n(&box->request, sequence, __ATOMIC_RELEASE);
        for (int i = 0; i < KS_MAILBOX_SPIN; i++) {
            if (__atomic_load_n(&box->response, __ATOMIC_ACQUIRE) == sequence) return box->result;
            __builtin_ia32_pause();
        }
        return ks_hostcall_exit(KS_HC_MAILBOX_WAIT, (long)sequence, 0, 0, 0, 0, 0);
    }
    return ks_hostcall_exit(nr, a0, a1, a2, a3, a4, a5);
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

/* Tells the host the program has initialized. Under `Snapshot`, the host freezes the VM here:
 * every fork starts paused at this point, where the host may call the program's functions or
 * let main() continue. Elsewhere it just returns. */
static inline void ks_ready(void) { ks_hostcall(KS_HC_READY, 0, 0, 0, 0, 0, 0); }

/* Parked VMs (ParkedSandbox): requests run on a stack at the top of the request arena and may
 * write only the arena without a VM exit (a write elsewhere works, but costs an exit and a slow
 * reset). ks_request_alloc serves memory from the arena's bottom, fresh (zeroed) for every
 * request; it returns 0 when the request would come within 4 KiB of its own stack. Call it only
 * inside a parked request (outside one the arena is not mapped). */
#define KS_ARENA_ADDRESS 0x7ff000100000UL
#define KS_ARENA_HEAP_OFFSET 64   /* the arena's header: heap bytes in use, the stub's answer */
static inline void *ks_request_alloc(unsigned long size) {
    unsigned long *used = (unsigned long *)KS_ARENA_ADDRESS, sp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
    unsigned long start = (*used + 15) & ~15UL;
    unsigned long address = KS_ARENA_ADDRESS + KS_ARENA_HEAP_OFFSET + start;
    if (address > sp || sp - address < 4096 || size > sp - address - 4096) return 0;
    *used = start + size;
    return (void *)address;
}

/* Nanoseconds on the host's monotonic clock. */
static inline long long ks_clock_ns(void) {
    struct { long long sec, nsec; } ts = {0, 0};
    ks_hostcall(KS_HC_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0, 0, 0, 0);
    return ts.sec * 1000000000LL + ts.nsec;
}

#ifdef __cplusplus
}
#endif
#endif
