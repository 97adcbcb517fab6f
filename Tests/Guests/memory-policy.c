/* Memory placement and W^X policy, as an unmodified static program sees it (DynamicTests). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *placed(void *result, void *wanted) {
    return result == MAP_FAILED ? "failed" : result == wanted ? "there" : "elsewhere";
}

int main(int argc, char **argv) {
    int fd = open(argv[0], O_RDONLY);
    void *hint = (void *)0x100000000;
    printf("free hint: %s\n", placed(mmap(hint, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), hint));
    void *stack = (void *)((uintptr_t)&fd & ~4095UL);
    printf("stack hint: %s\n", placed(mmap(stack, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), stack));
    void *top = (void *)0xfffffffffffff000UL;
    printf("top hint: %s\n", placed(mmap(top, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), top));
    void *code = (void *)((uintptr_t)main & ~4095UL);
    void *over = mmap(code, 4096, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    printf("file over code: %s errno %d\n", placed(over, code), over == MAP_FAILED ? errno : 0);
    void *stub = (void *)0x7ff000001000UL;
    over = mmap(stub, 4096, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    printf("file over stub: %s errno %d\n", placed(over, stub), over == MAP_FAILED ? errno : 0);
    void *exec = mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("anonymous exec: %s\n", exec == MAP_FAILED ? "refused" : "mapped");
    void *rwx = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("anonymous rwx: %s\n", rwx == MAP_FAILED ? "refused" : "mapped");
    if (rwx != MAP_FAILED) {
        unsigned char *code = rwx;
        code[0] = 0xb8; code[1] = 42; code[2] = 0; code[3] = 0; code[4] = 0; code[5] = 0xc3;  /* mov $42,%eax; ret */
        printf("jit returns %d\n", ((int (*)(void))rwx)());
    }
    char *ro = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    munmap(ro, 4096);
    char *rw = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    rw[0] = 1;
    printf("reused page writable and zeroed: %d\n", rw[1] == 0 && rw[0] == 1);
    char *file = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    char *fixed = mmap(file, 4096, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 4096);
    printf("file MAP_FIXED over own mapping: %s\n", placed(fixed, file));
    return 0;
}
