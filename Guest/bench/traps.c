// Host-call round trips by each trap method, argv[2] times: the host's handler for
// KS_HOSTCALL_USER returns its argument + 1, which the guest checks (unless given argv[3]).
//   out       out %al, $0x42 (the SDK's exit path)
//   mmio      a byte store to the MMIO doorbell page (an unbacked guest-physical address)
//   syscall   the syscall instruction (LSTAR stub on PVM, CPL 0 entry on hardware): a Linux
//             getppid served by the Linux layer (embedder calls are not reachable this way)
//   exception ud2, which the embedder's exception handler turns into the call and skips
//   exitless  the SDK's ks_hostcall through the mailbox (polling host thread)
#include <kvmsandbox.h>
#include <stdlib.h>
#include <string.h>

#define DOORBELL 0x7ff000003000UL

static inline long by_mmio(long nr, long a0) {
    long result;
    __asm__ volatile("movb %%al, (%[door])" : "=a"(result) : "a"(nr), "D"(a0), [door] "r"(DOORBELL) : "memory");
    return result;
}
static inline long by_syscall(long nr, long a0) {
    long result;
    __asm__ volatile("syscall" : "=a"(result) : "a"(nr), "D"(a0) : "rcx", "r11", "memory");
    return result;
}
static inline long by_exception(long nr, long a0) {
    long result;
    __asm__ volatile("ud2" : "=a"(result) : "a"(nr), "D"(a0) : "memory");
    return result;
}

int main(int argc, char **argv) {
    const char *m = argv[1];
    long n = atol(argv[2]);
    int check = argc < 4;  /* a third argument: do not check results (no handler, e.g. `kvmsandbox run`) */
    int method = !strcmp(m, "out") ? 0 : !strcmp(m, "mmio") ? 1 : !strcmp(m, "syscall") ? 2
               : !strcmp(m, "exception") ? 3 : !strcmp(m, "exitless") ? 4 : -1;
    if (method < 0) return 100;
    for (long i = 0; i < n; i++) {
        long r;
        switch (method) {
        case 0: r = ks_hostcall_exit(KS_HOSTCALL_USER, i, 0, 0, 0, 0, 0); break;
        case 1: r = by_mmio(KS_HOSTCALL_USER, i); break;
        case 2: r = by_syscall(110 /* getppid */, i) + i + 1; break;  /* getppid is 0 inside */
        case 3: r = by_exception(KS_HOSTCALL_USER, i); break;
        default: r = ks_hostcall(KS_HOSTCALL_USER, i, 0, 0, 0, 0, 0); break;
        }
        if (check && r != i + 1) return 1;
    }
    return 0;
}
