// What a program learns of the CPU: CPUID.1:ECX's OSXSAVE and AVX bits, XCR0 when OSXSAVE is
// on, and what GCC's __builtin_cpu_supports (glibc's ifuncs use the same logic) concludes.
#include <cpuid.h>
#include <stdio.h>

int main(void) {
    unsigned a, b, c, d;
    __cpuid(1, a, b, c, d);
    unsigned osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, xcr0 = 0;
    if (osxsave) {
        unsigned high;
        __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(high) : "c"(0));
    }
    __builtin_cpu_init();
    printf("osxsave=%u avx=%u ymm=%u builtin-avx=%d\n", osxsave, avx, (xcr0 & 6) == 6, __builtin_cpu_supports("avx") != 0);
    __cpuid(0x80000001, a, b, c, d);
    unsigned lzcnt = (c >> 5) & 1;
    __cpuid_count(7, 0, a, b, c, d);
    printf("lzcnt=%u avx2=%u bmi2=%u\n", lzcnt, (b >> 5) & 1, (b >> 8) & 1);
    return 0;
}
