// Faults at known places for the unwinder and symbolizer tests; built with several flag sets.
#include <kvmsandbox.h>
#include <stdio.h>
#include <string.h>

static volatile size_t length = 20;
static volatile int depth = 3;

__attribute__((noinline)) void leaf(int *p) { *p = 42; }
__attribute__((noinline)) void middle(int *p, int n) {
    if (n) middle(p, n - 1); else leaf(p);
    __asm__ volatile("");
}
__attribute__((noinline)) void copy(char *d) {
    memcpy(d, "a string for memcpy to copy", length);
    __asm__ volatile("");
}
__attribute__((noinline)) int deep(int n) {
    if (n == 0) { __asm__ volatile("ud2"); }
    return deep(n - 1) + 1;
}
// Hostile frame chains: RBP pointing at itself, into a supervisor page, or RSP into nowhere.
__attribute__((noinline)) void self_loop(void) {
    static unsigned long frame[2];
    frame[0] = (unsigned long)&frame[0];
    frame[1] = (unsigned long)&leaf + 1;
    __asm__ volatile("mov %0, %%rbp\n ud2" :: "r"(&frame[0]));
}

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    if (!strcmp(m, "nested")) middle((int *)16, depth);
    else if (!strcmp(m, "memcpy")) copy((char *)16);
    else if (!strcmp(m, "deep")) return deep(1000);
    else if (!strcmp(m, "self-loop")) self_loop();
    else if (!strcmp(m, "supervisor-rbp")) __asm__ volatile("mov $0x7ffffffff000, %rbp\n ud2");
    else if (!strcmp(m, "wild-rsp")) __asm__ volatile("mov $0xffff800000000000, %rsp\n mov $0x7ffffffff000, %rbp\n ud2");
    else if (!strcmp(m, "int3-resume")) {
        __asm__ volatile("int3");
        printf("resumed after int3\n");
    } else if (!strcmp(m, "ud2-emulate")) {
        long value;
        __asm__ volatile("mov $1, %%rax\n ud2" : "=a"(value));  // the host "emulates" ud2 as rax = 1234
        printf("ud2 gave %ld\n", value);
    } else return 100;
    return 0;
}
