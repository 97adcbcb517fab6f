// Regression guests for the hardening issue: each mode once crashed or hung the host.
#include <kvmsandbox.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static long raw(long nr, long a0, long a1, long a2) {
    long result;
    __asm__ volatile("syscall" : "=a"(result) : "a"(nr), "D"(a0), "S"(a1), "d"(a2) : "rcx", "r11", "memory");
    return result;
}

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    long result = 0;
    if (!strcmp(m, "tkill-huge")) result = raw(200, 1, 0x7fffffff, 0);
    else if (!strcmp(m, "tkill-negative")) result = raw(200, 1, -128, 0);
    else if (!strcmp(m, "kill-65")) result = raw(62, 1, 65, 0);
    else if (!strcmp(m, "tgkill-huge")) result = raw(234, 1, 1, 0x100000040L);
    else if (!strcmp(m, "munmap-stack")) {
        long local;
        result = raw(11, (long)&local & ~4095L, 4096, 0);
    }
    else if (!strcmp(m, "munmap-stub")) result = raw(11, 0x7ff000001000L, 4096, 0);
    else if (!strcmp(m, "munmap-mailbox")) result = raw(11, KS_MAILBOX_ADDRESS, 4096, 0);
    else if (!strcmp(m, "munmap-gdt")) result = raw(11, 0x7ffffffff000L, 4096, 0);
    else if (!strcmp(m, "munmap-top")) result = raw(11, 0x7ffffffff000L, 0x1000000, 0);
    else if (!strncmp(m, "mprotect-", 9)) {  // make a host page writable, then write it if that worked
        long page = !strcmp(m, "mprotect-gdt") ? 0x7ffffffff000L : !strcmp(m, "mprotect-idt") ? 0x7fffffffd000L
                  : !strcmp(m, "mprotect-stub") ? 0x7ff000001000L : !strcmp(m, "mprotect-vdso-data") ? 0x7ff000007000L
                  : !strcmp(m, "mprotect-vdso") ? 0x7ff000006000L : 0x7ff000002000L;  /* mailbox */
        result = raw(10, page, 4096, 3);  /* PROT_READ | PROT_WRITE */
        if (result == 0) { *(volatile long *)(page + 8) = 0x4141414141414141L; printf("wrote the page\n"); }
    }
    else if (!strcmp(m, "rep-outsb") || !strcmp(m, "outsb")) {
        static char buffer[16];
        long count = !strcmp(m, "rep-outsb") ? 8 : 1;
        long rax = 39;  // getpid, if it were (wrongly) served as a host call
        char *source = buffer;
        if (count == 8)
            __asm__ volatile("rep outsb" : "+S"(source), "+c"(count), "+a"(rax) : "d"(0x42) : "memory");
        else
            __asm__ volatile("outsb" : "+S"(source), "+a"(rax) : "d"(0x42) : "memory");
        printf("served: %ld\n", rax);
        return 0;
    }
    else if (!strcmp(m, "flood")) {  // write to stdout until a write fails; report why on stderr
        static char chunk[65536];
        memset(chunk, 'x', sizeof chunk);
        for (;;) {
            long n = raw(1, 1, (long)chunk, sizeof chunk);
            if (n < 0) { dprintf(2, "write: %ld\n", n); return 3; }
        }
    }
    else { printf("unknown mode %s\n", m); return 2; }
    printf("result=%ld\n", result);
    return 0;
}
