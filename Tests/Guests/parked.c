// Requests for parked VMs (ParkedSandbox): main() initializes and calls ks_ready(); the host
// parks the snapshot and calls the functions below without VM exits. Each probe_* function
// reports one piece of the state a request starts with; the scribble_* functions leave as much
// behind as a request can, so that the tests can check the next request sees none of it.
#include <kvmsandbox.h>
#include <stdint.h>
#include <string.h>

#define PARKING 0x7ff000004000UL
#define MAILBOX 0x7ff000002000UL
#define BIG (4L << 20)
static unsigned char big[BIG];      /* 1024 pages outside the arena */
static long global = 7;
static __thread long thread_local_value = 11;

long add(long a, long b) { return a + b; }
long sum_bytes(const unsigned char *p, long n) { long s = 0; for (long i = 0; i < n; i++) s += p[i]; return s; }

/* The registers a request starts with: everything but the arguments is zero (rax included). */
__asm__(".globl probe_registers\n.type probe_registers, @function\nprobe_registers:\n"
        "  mov %rbx, %rax\n  or %rbp, %rax\n  or %r10, %rax\n  or %r12, %rax\n  or %r13, %rax\n"
        "  or %r14, %rax\n  or %r15, %rax\n  ret\n");
/* RFLAGS at entry. */
__asm__(".globl probe_flags\n.type probe_flags, @function\nprobe_flags:\n  pushfq\n  pop %rax\n  ret\n");
/* RSP at entry (the return address below the arena's top). */
__asm__(".globl probe_stack\n.type probe_stack, @function\nprobe_stack:\n  mov %rsp, %rax\n  ret\n");
long probe_xmm(void) {
    uint64_t a, b, c;
    __asm__ volatile("movq %%xmm0, %0\n\tmovq %%xmm7, %1\n\tmovq %%xmm15, %2" : "=r"(a), "=r"(b), "=r"(c));
    return (long)(a | b | c);
}
long probe_mxcsr(void) { unsigned m; __asm__ volatile("stmxcsr %0" : "=m"(m)); return m; }
long probe_fcw(void) { unsigned short w; __asm__ volatile("fnstcw %0" : "=m"(w)); return w; }
long probe_tls(void) { return thread_local_value; }
long probe_global(void) { return global; }
/* DS, ES and GS (the FS selector is left out: on PVM the guest reads 0 from it in a fresh fork
 * and 0x2b after a reset that set the special registers, with the same base either way). */
long probe_segments(void) {
    unsigned short ds, es, fs, gs;
    __asm__ volatile("mov %%ds, %0\n\tmov %%es, %1\n\tmov %%fs, %2\n\tmov %%gs, %3" : "=r"(ds), "=r"(es), "=r"(fs), "=r"(gs));
    (void)fs;
    return ((long)ds << 32) | ((long)es << 16) | gs;
}
/* Non-zero words in the arena below the caller's frame, on the parking page beyond its
 * answer, and in the mailbox past its header: all must be zero at a request's start. */
long probe_arena(void) {
    long count = 0, here;
    for (unsigned long *p = (unsigned long *)KS_ARENA_ADDRESS; (unsigned long)p < (unsigned long)&here - 256; p++) count += *p != 0;
    return count;
}
long probe_pages(void) {
    long count = 0;
    for (unsigned long *p = (unsigned long *)(PARKING + 80); p < (unsigned long *)(PARKING + 4096); p++) count += *p != 0;
    for (unsigned long *p = (unsigned long *)(MAILBOX + 144); p < (unsigned long *)(MAILBOX + 4096); p++) count += *p != 0;
    return count;
}
long probe_big(void) { long count = 0; for (long i = 0; i < BIG; i += 64) count += big[i] != 0; return count; }

/* Leaves a secret everywhere a request can write without an exit. */
long scribble(long secret) {
    unsigned long *heap = ks_request_alloc(4096);
    if (heap) for (int i = 0; i < 512; i++) heap[i] = (unsigned long)secret;
    volatile unsigned long below[256];
    for (int i = 0; i < 256; i++) below[i] = (unsigned long)secret;
    ((volatile unsigned long *)MAILBOX)[300] = (unsigned long)secret;
    __asm__ volatile("movq %0, %%xmm0\n\tmovq %0, %%xmm7\n\tmovq %0, %%xmm15" :: "r"(secret) : "xmm0", "xmm7", "xmm15");
    unsigned mxcsr = 0x7f80 | 0x6000;
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    unsigned short fcw = 0x0c7f;
    __asm__ volatile("fldcw %0" :: "m"(fcw));
    unsigned short zero = 0;
    __asm__ volatile("mov %0, %%ds\n\tmov %0, %%es\n\tmov %0, %%gs" :: "r"(zero));
    /* Callee-saved registers and flags left changed (DF and AC set) on the way out. */
    __asm__ volatile("mov %0, %%rbx\n\tmov %0, %%r12\n\tmov %0, %%r13\n\tmov %0, %%r14\n\tmov %0, %%r15\n\t"
                     "pushfq\n\torq $0x40400, (%%rsp)\n\tpopfq" :: "r"(secret) : "memory");
    return below[0] == (unsigned long)secret;
}
/* Changes RSP and returns on the moved stack. */
__asm__(".globl move_stack\n.type move_stack, @function\nmove_stack:\n  pop %rcx\n  sub $8192, %rsp\n  mov $1, %eax\n  jmp *%rcx\n");

/* Outside the arena: the slow path. */
long write_global(long value) { global = value; return global; }
long write_pages(long n) { for (long i = 0; i < n && i * 4096 < BIG; i++) big[i * 4096] = 1; return n; }
long say(long n) { return ks_write(1, "parked\n", 7) + n * 0; }
long ask_host(long x) { return ks_hostcall(KS_HOSTCALL_USER, x, 0, 0, 0, 0, 0); }

/* Hostile requests. */
long spin(void) { for (;;) __asm__ volatile(""); }
long guard_page(void) { *(volatile long *)(KS_ARENA_ADDRESS - 8) = 1; return 0; }
long load_fs(void) { unsigned short s = 0x2b; __asm__ volatile("mov %0, %%fs" :: "r"(s)); return 0; }
long jump_idle(void) { ((void (*)(void))0x7ff000001200UL)(); return 0; }
/* A secret in the FS base (arch_prctl: a host call, so an exit and then the slow reset). The
 * base must stay readable for the idle stub's check: point it at the global. */
long set_fs_base(void) {
    long result;
    register long code __asm__("rdi") = 0x1002; /* ARCH_SET_FS */
    register long base __asm__("rsi") = (long)&global;
    __asm__ volatile("syscall" : "=a"(result) : "a"(158), "r"(code), "r"(base) : "rcx", "r11", "memory");
    return result;
}
long write_parking(void) { ((volatile unsigned long *)PARKING)[1] = 0; return 0; }
/* Answers for the host (the arena's done = posted, result 42) and keeps running, writing the
 * arena: the verification must catch it. */
long fake_done(long secret) {
    volatile unsigned long *arena = (volatile unsigned long *)KS_ARENA_ADDRESS;
    arena[2] = 42;
    arena[1] = ((volatile unsigned long *)PARKING)[0];
    for (;;) arena[100] = (unsigned long)secret;
}

int main(void) {
    memset(big, 0, sizeof big);
    thread_local_value = 11;
    ks_ready();
    return 0;
}
