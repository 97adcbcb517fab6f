/* Hostile thread and signal calls (ThreadsTests): bad clone flags and clone3 structs, unaligned
   futexes; a forged rt_sigreturn frame; a handler whose alternate stack is not mapped. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void handler(int signo) { (void)signo; }

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IONBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "calls")) {
        long shared = syscall(SYS_clone, 0x100 | 17 /* a process sharing memory, without vfork */, (void *)0x1000, 0, 0, 0);
        int sharedErrno = errno;
        long badFlags = syscall(SYS_clone, 0x100 | 0x800 | 0x10000 | 0x4000000 /* a thread in a new UTS namespace */, (void *)0x1000, 0, 0, 0);
        int badErrno = errno;
        unsigned long args[8] = {0};
        long small = syscall(435 /* clone3 */, args, 8);
        int smallErrno = errno;
        long huge = syscall(435, args, 1UL << 40);
        int hugeErrno = errno;
        long wild = syscall(435, (void *)0x10, 64);
        int wildErrno = errno;
        int word = 0;
        long unaligned = syscall(SYS_futex, (char *)&word + 1, 0 /* WAIT */, 0, 0, 0, 0);
        int unalignedErrno = errno;
        long unknownOp = syscall(SYS_futex, &word, 12 /* WAIT_REQUEUE_PI */, 0, 0, 0, 0);
        int unknownErrno = errno;
        printf("shared-vm=%ld/%d flags=%ld/%d clone3-small=%ld/%d clone3-huge=%ld/%d clone3-wild=%ld/%d futex-unaligned=%ld/%d futex-op=%ld/%d\n",
               shared, sharedErrno, badFlags, badErrno, small, smallErrno, huge, hugeErrno, wild, wildErrno,
               unaligned, unalignedErrno, unknownOp, unknownErrno);
        return 0;
    }
    if (!strcmp(mode, "sigreturn")) {  /* rt_sigreturn with the stack pointing at nothing */
        __asm__ volatile("mov $0x100000000000, %%rsp\n mov $15, %%eax\n syscall" ::: "memory");
        return 1;
    }
    if (!strcmp(mode, "altstack")) {  /* a handler on an alternate stack that is not mapped */
        stack_t stack = {.ss_sp = (void *)0x100000000000, .ss_size = 65536};
        sigaltstack(&stack, 0);
        struct sigaction action = {.sa_handler = handler, .sa_flags = SA_ONSTACK};
        sigaction(SIGUSR1, &action, 0);
        raise(SIGUSR1);
        return 1;
    }
    return 2;
}
