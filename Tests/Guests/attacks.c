// Hostile behaviour, one per argv[1]. Each must end in a precise outcome, never harm the host.
#include <kvmsandbox.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile int zero = 0;
typedef void (*fn)(void);

__attribute__((noinline)) static int recurse(int n) {
    volatile char pad[4096];
    pad[0] = (char)n;
    return recurse(n + 1) + pad[0];
}

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    if (!strcmp(m, "null-write")) *(volatile int *)0 = 1;
    else if (!strcmp(m, "null-read")) return *(volatile int *)8;
    else if (!strcmp(m, "wild-write")) *(volatile long *)0x3fffffff0000L = 1;
    else if (!strcmp(m, "code-write")) *(volatile char *)(uintptr_t)&main = 0;
    else if (!strcmp(m, "stack-exec")) { unsigned char code[16] = {0xc3}; ((fn)(void *)code)(); }
    else if (!strcmp(m, "data-exec")) { static unsigned char code[16] = {0xc3}; ((fn)(void *)code)(); }
    else if (!strcmp(m, "stack-overflow")) return recurse(0);
    else if (!strcmp(m, "hlt")) __asm__ volatile("hlt");
    else if (!strcmp(m, "cli")) __asm__ volatile("cli");
    else if (!strcmp(m, "sti")) __asm__ volatile("sti");
    else if (!strcmp(m, "mov-cr0")) { unsigned long v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); }
    else if (!strcmp(m, "misaligned-sse")) {
        static char buffer[64] __attribute__((aligned(16)));
        __asm__ volatile("movaps (%0), %%xmm0" :: "r"(buffer + 1) : "xmm0");
    }
    else if (!strcmp(m, "read-low-pages")) {  // where identity-mapped page tables would be
        for (unsigned long a = 0x1000; a < 0x400000; a += 0x1000) zero += *(volatile char *)a;
    }
    else if (!strcmp(m, "host-address")) return *(volatile char *)0x7f0000000000L;
    else if (!strcmp(m, "kernel-address")) return *(volatile char *)0xffffffff81000000UL;
    else if (!strcmp(m, "non-canonical")) return *(volatile char *)0x0000800000000000UL;
    else if (!strcmp(m, "wild-jump")) ((fn)0xdeadbeef000L)();
    else if (!strcmp(m, "mov-cr3")) { unsigned long v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); }
    else if (!strcmp(m, "write-cr3")) __asm__ volatile("mov %0, %%cr3" :: "r"(0UL));
    else if (!strcmp(m, "lgdt")) { struct { uint16_t l; uint64_t b; } __attribute__((packed)) d = {0, 0}; __asm__ volatile("lgdt %0" :: "m"(d)); }
    else if (!strcmp(m, "lidt")) { struct { uint16_t l; uint64_t b; } __attribute__((packed)) d = {0, 0}; __asm__ volatile("lidt %0" :: "m"(d)); }
    else if (!strcmp(m, "wrmsr")) __asm__ volatile("wrmsr" :: "c"(0xc0000082), "a"(0), "d"(0));
    else if (!strcmp(m, "rdmsr")) { unsigned a, d; __asm__ volatile("rdmsr" : "=a"(a), "=d"(d) : "c"(0xc0000082)); }
    else if (!strcmp(m, "out-other-port")) __asm__ volatile("outb %%al, $0x80" :: "a"(0));
    else if (!strcmp(m, "in-port")) { unsigned char v; __asm__ volatile("inb $0x42, %0" : "=a"(v)); }
    else if (!strcmp(m, "read-gdt")) return *(volatile char *)0x7ffffffff000L;
    else if (!strcmp(m, "write-gdt")) *(volatile char *)0x7ffffffff000L = 0;
    else if (!strcmp(m, "trap-flag")) __asm__ volatile("pushf\n orq $0x100, (%rsp)\n popf\n nop\n nop");
    else if (!strcmp(m, "read-idt")) return *(volatile char *)0x7fffffffe000L;
    else if (!strcmp(m, "write-idt")) *(volatile char *)0x7fffffffe000L = 0;
    else if (!strcmp(m, "read-kernel-stack")) return *(volatile char *)0x7fffffffbff8L;
    else if (!strcmp(m, "exec-exception-stub")) ((fn)0x7fffffffd000L)();
    else if (!strcmp(m, "write-stub")) *(volatile char *)0x7ff000001000L = 0;
    else if (!strcmp(m, "ud2")) __asm__ volatile("ud2");
    else if (!strcmp(m, "int3")) __asm__ volatile("int3");
    else if (!strcmp(m, "int80")) __asm__ volatile("int $0x80");
    else if (!strcmp(m, "divide")) { unsigned d = zero; __asm__ volatile("xor %%edx, %%edx\n div %0" :: "r"(d), "a"(1) : "rdx"); }
    else if (!strcmp(m, "syscall-nonsense")) {
        long r;
        __asm__ volatile("syscall" : "=a"(r) : "a"(100000L) : "rcx", "r11", "memory");
        printf("syscall=%ld\n", r);
        return r == -38 ? 0 : 1;
    }
    else if (!strcmp(m, "spin")) for (;;) __asm__ volatile("");
    else if (!strcmp(m, "hostcall-loop")) for (;;) ks_hostcall(39, 0, 0, 0, 0, 0, 0);
    else if (!strcmp(m, "abort")) abort();
    else if (!strcmp(m, "exit-status")) ks_exit(42);
    else return 100;
    printf("survived %s\n", m);
    return 0;
}
