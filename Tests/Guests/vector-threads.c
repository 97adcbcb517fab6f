/* Threads keep their own SSE and AVX registers across preemption (ThreadsTests). */
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
static void *worker(void *arg) {
    uint64_t id = (uint64_t)arg, bad = 0;
    for (int round = 0; round < 200; round++) {
        uint64_t out, out2;
        __asm__ volatile(
            "movq %2, %%xmm0\n"
            "vpbroadcastq %%xmm0, %%ymm1\n"
            "mov $200000, %%ecx\n"
            "1: dec %%ecx\n jnz 1b\n"
            "movq %%xmm0, %0\n"
            "vextracti128 $1, %%ymm1, %%xmm2\n"
            "movq %%xmm2, %1\n"
            : "=r"(out), "=r"(out2) : "r"(id * 0x1111111111111111ULL + round) : "rcx", "xmm0", "xmm1", "xmm2");
        if (out != id * 0x1111111111111111ULL + round || out2 != out) bad++;
    }
    return (void *)bad;
}
int main(void) {
    pthread_t t[4]; uint64_t bad = 0;
    for (uint64_t i = 0; i < 4; i++) pthread_create(&t[i], 0, worker, (void *)(i + 1));
    for (int i = 0; i < 4; i++) { void *r; pthread_join(t[i], &r); bad += (uint64_t)r; }
    printf("bad=%llu\n", (unsigned long long)bad);
    return 0;
}
