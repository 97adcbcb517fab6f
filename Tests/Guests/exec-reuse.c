// Anonymous memory handed out again over pages that were executable must not stay executable:
// a JIT-style mapping (RW, then RX) runs `ret`, is unmapped, and the next mapping of the same
// size reuses the same pages read-write (the host's allocator is first-fit). Calling into them
// must fault (NX). Run with JIT allowed; prints "reused" and dies with SIGSEGV when right,
// prints "STILL EXECUTABLE" and exits 1 when the old translation survived.
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void) {
    const size_t size = 64 * 1024;
    unsigned char *code = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) { printf("mmap failed\n"); return 2; }
    code[0] = 0xc3;  // ret
    if (mprotect(code, size, PROT_READ | PROT_EXEC) != 0) { printf("mprotect failed\n"); return 2; }
    ((void (*)(void))code)();  // the translation is now cached executable
    munmap(code, size);
    unsigned char *data = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data != code) { printf("not reused: %p then %p\n", (void *)code, (void *)data); return 3; }
    printf("reused\n");
    fflush(stdout);
    data[0] = 0xc3;
    ((void (*)(void))data)();
    printf("STILL EXECUTABLE\n");
    return 1;
}
