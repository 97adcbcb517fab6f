// A warmed service for the fork/reset benchmarks: main() fills a 4 MiB table, calls ks_ready(),
// and the host calls add() (a minimal request) or touch(n) (dirty n pages) in forks.
#include <kvmsandbox.h>
#include <stdlib.h>

#define TABLE (4L << 20)
static unsigned char *table;

long add(long a, long b) { return a + b; }
long touch(long n) { for (long i = 0; i < n && i * 4096 < TABLE; i++) table[i * 4096]++; return n; }

int main(void) {
    table = malloc(TABLE);
    for (long i = 0; i < TABLE; i += 64) table[i] = (unsigned char)i;
    ks_ready();
    return 0;
}
