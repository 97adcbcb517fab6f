// Exercises the host-call ABI. argv[1] picks the case; the result is printed as "result=N".
#include <kvmsandbox.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define HC_ECHO (KS_HOSTCALL_USER + 0)   /* (a0..a5) -> sum of arguments */
#define HC_FILL (KS_HOSTCALL_USER + 1)   /* (buf, len, byte) -> fills buf, returns len */
#define HC_PUTS (KS_HOSTCALL_USER + 2)   /* (cstring) -> length read by the host */
#define HC_READ (KS_HOSTCALL_USER + 3)   /* (buf, len) -> sum of bytes */
#define HC_THROW (KS_HOSTCALL_USER + 4)  /* handler throws a non-guest error */

static char data[8192] = "initialized data";
static const char rodata[16] = "read-only";

static long report(long value) { printf("result=%ld\n", value); return value; }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "echo";
    if (!strcmp(mode, "echo")) return report(ks_hostcall(HC_ECHO, 1, 2, 3, 4, 5, 6)) == 21 ? 0 : 1;
    if (!strcmp(mode, "unknown")) return report(ks_hostcall(KS_HOSTCALL_USER + 99, 0, 0, 0, 0, 0, 0)) == -38 ? 0 : 1;
    if (!strcmp(mode, "unknown-builtin")) return report(ks_hostcall(999, 0, 0, 0, 0, 0, 0)) == -38 ? 0 : 1;
    if (!strcmp(mode, "fill")) {
        char buf[64] = {0};
        long n = ks_hostcall(HC_FILL, (long)buf, sizeof buf, 'x', 0, 0, 0);
        for (int i = 0; i < 64; i++) if (buf[i] != 'x') return 2;
        return report(n) == 64 ? 0 : 1;
    }
    if (!strcmp(mode, "puts")) return report(ks_hostcall(HC_PUTS, (long)"hello host", 0, 0, 0, 0, 0)) == 10 ? 0 : 1;
    if (!strcmp(mode, "read-sum")) {
        unsigned char buf[300];
        for (int i = 0; i < 300; i++) buf[i] = 1;
        return report(ks_hostcall(HC_READ, (long)buf, sizeof buf, 0, 0, 0, 0)) == 300 ? 0 : 1;
    }
    if (!strcmp(mode, "throw")) { ks_hostcall(HC_THROW, 0, 0, 0, 0, 0, 0); return 0; }
    // Bad pointers: every one must come back as -EFAULT (-14), never crash the host.
    long r = 0;
    if (!strcmp(mode, "null")) r = ks_hostcall(HC_FILL, 0, 16, 'x', 0, 0, 0);
    else if (!strcmp(mode, "wild")) r = ks_hostcall(HC_FILL, 0x123456789000L, 16, 'x', 0, 0, 0);
    else if (!strcmp(mode, "kernel-half")) r = ks_hostcall(HC_FILL, (long)0xffff800000000000UL, 16, 'x', 0, 0, 0);
    else if (!strcmp(mode, "host-address")) r = ks_hostcall(HC_READ, (long)0x7f0000000000L, 16, 0, 0, 0, 0);
    else if (!strcmp(mode, "write-rodata")) r = ks_hostcall(HC_FILL, (long)rodata, 16, 'x', 0, 0, 0);
    else if (!strcmp(mode, "write-code")) r = ks_hostcall(HC_FILL, (long)&main, 16, 'x', 0, 0, 0);
    else if (!strcmp(mode, "read-gdt")) r = ks_hostcall(HC_READ, 0x7ffffffff000L, 8, 0, 0, 0, 0);
    else if (!strcmp(mode, "overflow-length")) r = ks_hostcall(HC_READ, (long)data, -1L, 0, 0, 0, 0);
    else if (!strcmp(mode, "straddle")) {
        // A range that starts in mapped data and runs past the end of the image into unmapped memory.
        r = ks_hostcall(HC_READ, (long)data, 1L << 30, 0, 0, 0, 0);
    } else if (!strcmp(mode, "unterminated")) {
        static char big[100000];
        memset(big, 'a', sizeof big);
        r = ks_hostcall(HC_PUTS, (long)big, 0, 0, 0, 0, 0);
    } else if (!strcmp(mode, "write-bad")) r = ks_write(1, (void *)16, 10);
    else if (!strcmp(mode, "write-huge")) r = ks_write(1, data, 1UL << 40);
    else if (!strcmp(mode, "write-badfd")) { r = ks_write(7, data, 4); return report(r) == -9 ? 0 : 1; }
    else if (!strcmp(mode, "write-ok")) { r = ks_write(2, "to stderr\n", 10); return report(r) == 10 ? 0 : 1; }
    else return 100;
    return report(r) == -14 ? 0 : 1;
}
