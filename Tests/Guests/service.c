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
long say(const char *s) { printf("%s\n", s); fflush(stdout); return (long)strlen(s); }
long quit(long status) { exit((int)status); }

int main(int argc, char **argv) {
    table = malloc(TABLE);
    for (long i = 0; i < TABLE; i++) table[i] = (unsigned char)(i * 7);
    if (argc > 1 && !strcmp(argv[1], "no-ready")) return 9;
    ks_ready();
    printf("main resumed, counter=%ld\n", counter);
    return 3;
}
