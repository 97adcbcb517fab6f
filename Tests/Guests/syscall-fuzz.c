// A syscall fuzzer inside the VM (in the spirit of syzkaller): random built-in and unknown
// call numbers with random and boundary arguments, through both traps (`syscall` and
// `out %al, $0x42`). The host must answer every call; the guest ends normally.
//   syscall-fuzz SEED COUNT      prints "COUNT calls returned" to stderr and exits 0
#include <kvmsandbox.h>
#include <stdio.h>
#include <stdlib.h>

static unsigned long state;
static unsigned long next(void) {  // xorshift64*
    state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DUL;
}

// Scratch for pointer arguments: calls may write up to 1 MiB past a pointer (getrandom), so it
// is an mmap of its own, away from libc's data.
static char *buffer;

__attribute__((noinline)) static unsigned long argument(void) {
    switch (next() % 13) {
    case 0: return next();
    case 1: return next() % 256;
    case 2: return (unsigned long)buffer + next() % 8192;
    case 3: return (unsigned long)buffer + (3 << 20) + next() % 4096; // the end of its scratch mapping
    case 4: return (unsigned long)&next + next() % 64;             // code (read-only)
    case 5: return 0x7ff000001000UL + next() % 8192;                // the syscall stub and mailbox pages
    case 6: return 0x7fffffffe000UL + next() % 8192;                // the IDT and GDT/TSS pages
    case 7: return 0x800000000000UL + next() % 4096;                // non-canonical
    case 8: return 0xffff800000000000UL + next();                   // the kernel half
    case 9: return -(next() % 4096);                                // near 2^64
    case 10: return 1UL << (next() % 64);                          // powers of two: huge lengths
    case 11: {                                                      // a path: in /tmp (in memory), or elsewhere
        static const char *paths[] = {"/tmp/a", "/tmp/d", "/tmp/d/b", "/tmp", "/", "/etc/passwd", "/proc/self/maps",
                                      "/dev/null", "/tmp/../etc/passwd", ".", "..", "/proc/meminfo"};
        return (unsigned long)paths[next() % 12];
    }
    default: return 0;
    }
}

static long call(long nr, unsigned long a[6], int by_out) {
    register long r10 __asm__("r10") = a[3], r8 __asm__("r8") = a[4], r9 __asm__("r9") = a[5];
    long result;
    if (by_out)
        __asm__ volatile("out %%al, $0x42" : "=a"(result) : "a"(nr), "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9) : "memory");
    else
        __asm__ volatile("syscall" : "=a"(result) : "a"(nr), "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
    return result;
}

int main(int argc, char **argv) {
    state = argc > 1 ? strtoul(argv[1], 0, 0) * 2654435761UL + 1 : 1;
    long count = argc > 2 ? strtol(argv[2], 0, 0) : 10000;
    buffer = (char *)call(9, (unsigned long[6]){0, 4 << 20, 3, 0x22, -1UL, 0}, 0);
    unsigned long fs;
    __asm__ volatile("mov %%fs:0, %0" : "=r"(fs));  // musl's TLS self pointer = the FS base
    static const long builtins[] = {0, 1, 9, 10, 11, 12, 13, 14, 16, 20, 28, 39, 158, 186, 218, 228, 318,
                                    2, 3, 4, 5, 8, 17, 18, 19, 21, 32, 33, 72, 79, 80, 82, 83, 84, 87, 89, 217, 257, 262, 263, 292,
                                    62, 200, 234, 0xf00, 0xf02, 0x1000, 0xffff};
    for (long i = 0; i < count; i++) {
        unsigned long a[6];
        for (int k = 0; k < 6; k++) a[k] = argument();
        long nr = next() % 4 ? builtins[next() % (sizeof builtins / sizeof *builtins)] : (long)(next() % 1024);
        if (nr == 60 || nr == 231) continue;                 // exit, exit_group: would end the run
        // Calls that only wait (sleeps, pipes nobody else writes, poll) would sit until the deadline.
        if (nr == 35 || nr == 230 || nr == 22 || nr == 293 || nr == 7 || nr == 23 || nr == 270 || nr == 271) continue;
        // Likewise epoll waits, eventfds (a read of one at 0 waits), futex waits, pause; and calls
        // that hand the guest's own control flow to random values: threads on random stacks
        // (clone, clone3), rt_sigreturn of whatever is on the stack, timers whose SIGALRM ends it.
        if (nr == 232 || nr == 281 || nr == 441 || nr == 284 || nr == 290 || nr == 202 || nr == 34) continue;
        if (nr == 56 || nr == 57 || nr == 58 || nr == 435 || nr == 15 || nr == 37 || nr == 38) continue;
        // Memory calls that would take the guest's own stack or code away from it (mprotect,
        // MADV_DONTNEED, mremap, munmap, MAP_FIXED) land in its scratch mapping instead.
        if (nr == 10 || nr == 28 || nr == 25 || nr == 11 || (nr == 9 && (a[3] & 0x100010))) {
            a[0] = (unsigned long)buffer + (next() % 1024) * 4096;
            // MADV_DONTNEED over a range reaching the stack would zero it (as on Linux): keep its
            // length inside the 1 MiB unmapped gap past the 4 MiB scratch. (The others, at any
            // length, are refused before they change anything.)
            if (nr == 28) a[1] %= (1UL << 20) - 8192;
        }
        if (nr == 62 || nr == 200) a[1] = a[1] % 65 ? a[1] | 0x100 : 0;  // kill/tkill: only invalid signals or 0
        if (nr == 234) a[2] = a[2] % 65 ? a[2] | 0x100 : 0;              // tgkill likewise
        call(nr, a, next() & 1);
        if (nr == 158) { unsigned long set[6] = {0x1002, fs}; call(158, set, 0); }  // put TLS back
    }
    // By host call, not through the fd table the calls above may have closed or redirected.
    char line[64];
    int n = snprintf(line, sizeof line, "%ld calls returned\n", count);
    ks_write(2, line, (unsigned long)n);
    ks_exit(0);
}
