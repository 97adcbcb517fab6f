// CPU-bound work, the same code in a guest and as a host process: argv[1] rounds of a hash.
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    unsigned long rounds = argc > 1 ? strtoul(argv[1], 0, 10) : 1000000;
    unsigned long h = 1469598103934665603UL;
    static unsigned char table[1 << 16];
    for (unsigned long i = 0; i < rounds; i++) {
        h = (h ^ (i & 0xff)) * 1099511628211UL;
        table[h & 0xffff] += (unsigned char)h;
    }
    unsigned long sum = 0;
    for (int i = 0; i < (1 << 16); i++) sum += table[i];
    printf("%lu %lu\n", h, sum);  // printed so the work cannot be optimised away
    return 0;
}
