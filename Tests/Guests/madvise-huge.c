/* Memory calls over huge ranges of nothing return at once: the host visits mapped pages only
   (MADV_DONTNEED over 32 TiB used to walk 2^33 pages, past any deadline; mprotect, MAP_FIXED and
   munmap over a 1 TiB reservation 2^28). HardeningTests. */
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
int main(void) {
    char *p = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p[0] = 1;
    struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
    int r = madvise((void *)0x100000000000UL, (1UL << 45), MADV_DONTNEED);  /* 32 TiB of nothing */
    size_t tib = 1UL << 40;
    char *reserved = mmap(0, tib, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    int protect = mprotect(reserved, tib, PROT_NONE);
    void *fixed = mmap(reserved, tib, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    int unmap = munmap(reserved, tib);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("r=%d p0=%d fast=%d\n", r, p[0], (b.tv_sec - a.tv_sec) < 2);
    printf("reserve=%d protect=%d fixed=%d munmap=%d\n", reserved != MAP_FAILED, protect, fixed == reserved, unmap);
    return 0;
}
