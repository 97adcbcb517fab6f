/* Signals as unmodified programs use them: SIGSEGV on an alternate stack recovered with siglongjmp
   (si_addr, the ucontext's registers), SIGILL resumed by editing RIP, alarm(1) while computing,
   and a default action that ends the process. ThreadsTests. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static sigjmp_buf recover_point;
static volatile void *fault_address;
static volatile int on_alternate;
static char alternate[65536];
static volatile unsigned long long fault_rip, fault_rbx;

static void segv(int signo, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    fault_address = info->si_addr;
    fault_rip = uc->uc_mcontext.gregs[REG_RIP];
    fault_rbx = uc->uc_mcontext.gregs[REG_RBX];
    on_alternate = (char *)&uc > alternate && (char *)&uc < alternate + sizeof alternate;
    siglongjmp(recover_point, 1);
}

static volatile int alarms;
static void alarm_handler(int signo) { alarms++; }

static volatile int ill;
static void sigill(int signo, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    ill = info->si_code;
    uc->uc_mcontext.gregs[REG_RIP] += 2;  /* skip ud2 and resume */
}

int main(void) {
    setvbuf(stdout, 0, _IONBF, 0);
    stack_t stack = {.ss_sp = alternate, .ss_size = sizeof alternate};
    sigaltstack(&stack, 0);
    struct sigaction action = {.sa_sigaction = segv, .sa_flags = SA_SIGINFO | SA_ONSTACK};
    sigaction(SIGSEGV, &action, 0);
    if (sigsetjmp(recover_point, 1) == 0) {
        unsigned long long marker = 0x1234;
        __asm__ volatile("mov %0, %%rbx; movb $1, 0x48(%%rbx)" :: "r"(marker) : "rbx", "memory");
    }
    printf("recovered: addr=%p on_alternate=%d rbx=%llx rip_ok=%d\n", fault_address, on_alternate, fault_rbx, fault_rip != 0);
    struct sigaction ia = {.sa_sigaction = sigill, .sa_flags = SA_SIGINFO};
    sigaction(SIGILL, &ia, 0);
    __asm__ volatile("ud2");
    printf("resumed after ud2: si_code=%d\n", ill);
    signal(SIGALRM, alarm_handler);
    alarm(1);
    volatile unsigned long spin = 0;
    while (!alarms) spin++;
    printf("alarm fired while computing: %d\n", alarms);
    raise(SIGUSR1 + 0 * 0);  /* default action: terminate */
    printf("not reached\n");
    return 0;
}
