// A service that initializes once, then serves calls in forks:
//   kvmsandbox cc -O2 -o service.elf Examples/service.c
//   kvmsandbox call --forks 5 service.elf fib 30
#include <kvmsandbox.h>
#include <stdio.h>
#include <stdlib.h>

static long *memo;  /* built once, before the snapshot; every fork shares these pages */

long fib(long n) { return n < 0 || n > 90 ? -1 : memo[n]; }

int main(void) {
    memo = calloc(91, sizeof *memo);
    memo[1] = 1;
    for (int i = 2; i <= 90; i++) memo[i] = memo[i - 1] + memo[i - 2];
    printf("service: initialized\n");
    fflush(stdout);
    ks_ready();  /* the host snapshots here; forks start paused at this point */
    return 0;
}
