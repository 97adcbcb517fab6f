// A "warmed" service for snapshot, fork, reset and guest-call tests: main() initializes a 4 MiB
// table, calls ks_ready(), and the host then calls the functions below in forks.
#include <kvmsandbox.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TABLE (4L << 20)
static unsigned char *table;
static char secret[4096];
static long counter;

long add(long a, long b) { return a + b; }
long sum_bytes(const unsigned char *p, long n) { long s = 0; for (long i = 0; i < n; i++) s += p[i]; return s; }
long write_secret(const char *s) { strncpy(secret, s, sizeof secret - 1); return ++counter; }
long read_secret(void) { return secret[0]; }
long get_counter(void) { return counter; }
long touch_pages(long n) { for (long i = 0; i < n && i * 4096 < TABLE; i++) table[i * 4096]++; return n; }
long dirty_everything(void) { memset(table, 0xff, TABLE); memset(secret, 'x', sizeof secret); counter = -1; return 0; }
long checksum(void) {
    unsigned long h = 5381;
    for (long i = 0; i < TABLE; i += 64) h = h * 33 + table[i];
    for (unsigned i = 0; i < sizeof secret; i++) h = h * 33 + (unsigned char)secret[i];
    return (long)(h ^ (unsigned long)counter);
}
long allocate(long n) { unsigned char *p = malloc(n); if (!p) return -1; memset(p, 7, n); return p[n - 1]; }
long nonzero_in_fresh(long n) {  /* new memory must read as zero, whatever earlier requests did */
    unsigned char *p = malloc(n);
    if (!p) return -1;
    long count = 0;
    for (long i = 0; i < n; i++) count += p[i] != 0;
    return count;
}
long map_and_touch(long n) { unsigned char *p = malloc(n); if (!p) return 0; memset(p, 1, n); return (long)p; }
long probe(long address) { return *(volatile unsigned char *)address; }
long crash(void) { *(volatile int *)0 = 1; return 0; }
long spin(void) { for (;;) __asm__ volatile(""); }
long ask_host(long x) { return ks_hostcall(KS_HOSTCALL_USER, x, 0, 0, 0, 0, 0); }
/* Typed host functions: a string as (address, length), and the raw words for hostile input. */
long ask_host_text(const char *s, long times) { return ks_hostcall(KS_HOSTCALL_USER + 1, (long)s, (long)strlen(s), times, 0, 0, 0); }
long ask_host_raw(long a, long b, long c) { return ks_hostcall(KS_HOSTCALL_USER + 1, a, b, c, 0, 0, 0); }
long say(const char *s) { printf("%s\n", s); fflush(stdout); return (long)strlen(s); }
long quit(long status) { exit((int)status); }

/* Paths for the host-call fuzzer's Linux system calls (Fuzz/, Scripts/fuzz): it points path
 * arguments into this table. */
__attribute__((used)) const char fuzz_paths[] = "/dev/null\0/proc/meminfo\0/\0.\0..\0/fuzz/data\0/fuzz/data/fruit.txt\0"
    "/fuzz/data/../../etc/passwd\0/proc/self/exe\0/fuzz\0/fuzz/data/escape-link\0/dev/zero\0/fuzz/data/sub/deeper\0";

/* FPU and vector state: a request must never see what an earlier one left there. */
long set_fpu_secret(long v) {
    __asm__ volatile("movq %0, %%xmm0\n\tmovq %0, %%xmm7\n\tmovq %0, %%xmm15" :: "r"(v) : "xmm0", "xmm7", "xmm15");
    unsigned mxcsr = 0x7f80 | 0x6000;  /* all exceptions masked, round toward zero */
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    unsigned short cw = 0x0c7f;         /* x87: round toward zero */
    __asm__ volatile("fldcw %0\n\tfld1\n\tfld1" :: "m"(cw));  /* and two values left on the x87 stack */
    return 0;
}
/* A file in the in-memory /tmp: part of the VM's state, so a reset must remove it. */
long tmp_write(const char *s) { FILE *f = fopen("/tmp/state.txt", "w"); if (!f) return -1; fputs(s, f); fclose(f); return 0; }
long tmp_read(void) { FILE *f = fopen("/tmp/state.txt", "r"); if (!f) return -2; int c = fgetc(f); fclose(f); return c; }
long read_xmm0(void) { long v; __asm__ volatile("movq %%xmm0, %0" : "=r"(v)); return v; }
long read_xmm7(void) { long v; __asm__ volatile("movq %%xmm7, %0" : "=r"(v)); return v; }
long read_xmm15(void) { long v; __asm__ volatile("movq %%xmm15, %0" : "=r"(v)); return v; }
long read_mxcsr(void) { unsigned v; __asm__ volatile("stmxcsr %0" : "=m"(v)); return v; }
long read_x87_control(void) { unsigned short v; __asm__ volatile("fnstcw %0" : "=m"(v)); return v; }
long read_x87_status(void) { unsigned short v; __asm__ volatile("fnstsw %0" : "=m"(v)); return v; }

int main(int argc, char **argv) {
    /* State the snapshot holds, which every fork must start from. */
    unsigned mxcsr = 0x1f80 | 0x8000;  /* flush-to-zero */
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    if (argc > 1 && !strcmp(argv[1], "wild-ready")) {
        /* ks_ready() with a stack pointer that points nowhere: the host must refuse calls, not trap. */
        __asm__ volatile("mov %%rsp, %%r12\n\tmov $0x80, %%rsp\n\tmov $0xf00, %%eax\n\tout %%al, $0x42\n\tmov %%r12, %%rsp"
                         ::: "rax", "r12", "memory");
        return 8;
    }
    table = malloc(TABLE);
    for (long i = 0; i < TABLE; i++) table[i] = (unsigned char)(i * 7);
    if (argc > 1 && !strcmp(argv[1], "no-ready")) return 9;
    __asm__ volatile("movq %0, %%xmm7" :: "r"(0x5eed5eedL) : "xmm7");
    ks_ready();
    printf("main resumed, counter=%ld\n", counter);
    return 3;
}
