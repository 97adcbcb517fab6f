// Heap behaviour. argv[1]: "churn" (many allocations, checked), "exhaust" (allocate until NULL).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "churn";
    if (!strcmp(mode, "churn")) {
        enum { N = 20000 };
        static char *blocks[N];
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < N; i++) {
                size_t size = 1 + (i * 7919) % 2048;
                blocks[i] = malloc(size);
                if (!blocks[i]) return 2;
                memset(blocks[i], i & 0xff, size);
            }
            for (int i = 0; i < N; i++) {
                size_t size = 1 + (i * 7919) % 2048;
                if ((unsigned char)blocks[i][size - 1] != (i & 0xff)) return 3;
                free(blocks[i]);
            }
        }
        char *big = malloc(8 << 20);  // an mmap-sized block
        if (!big) return 4;
        memset(big, 1, 8 << 20);
        free(big);
        printf("churn ok\n");
        return 0;
    }
    if (!strcmp(mode, "exhaust")) {
        size_t total = 0;
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) break;
            memset(p, 0xab, 1 << 20);
            total += 1 << 20;
            if (total > (1UL << 34)) return 5;
        }
        char *small = malloc(16);  // a failed big allocation leaves the heap usable
        printf("exhausted after %zu MiB, small=%s\n", total >> 20, small ? "ok" : "null");
        return 0;
    }
    return 100;
}
