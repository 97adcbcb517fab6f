// Exitless host calls, honest and hostile. argv[1] picks the case; handler KS_HOSTCALL_USER
// returns its first argument + 1.
#include <kvmsandbox.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ECHO KS_HOSTCALL_USER
static struct ks_mailbox *const box = (struct ks_mailbox *)KS_MAILBOX_ADDRESS;

static int calls(long n) {
    for (long i = 0; i < n; i++) {
        long r = ks_hostcall(ECHO, i, 0, 0, 0, 0, 0);
        if (r != i + 1) { printf("call %ld returned %ld\n", i, r); return 1; }
    }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    long n = argc > 2 ? atol(argv[2]) : 1000;
    if (!strcmp(m, "calls")) return calls(n);
    if (!strcmp(m, "scribble")) {
        // Garbage in every field, built-in numbers (exit!) posted through the page, sequences
        // that jump around: the host answers what it serves with errors, never exits for it.
        unsigned long x = 88172645463325252UL;
        for (int i = 0; i < 20000; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            box->number = (i % 3 == 0) ? 60 /* exit */ : x;
            for (int a = 0; a < 6; a++) box->args[a] = x * (a + 1);
            box->response = x;
            box->polling = x & 1;
            __atomic_store_n(&box->request, (i % 5 == 0) ? x : box->request + 1, __ATOMIC_RELEASE);
        }
        for (int i = 0; i < 100000; i++) __builtin_ia32_pause();
        box->polling = 1;
        return calls(100);
    }
    if (!strcmp(m, "flood")) {
        for (long i = 0; i < 1000000; i++) { box->number = ECHO; __atomic_store_n(&box->request, box->request + 1, __ATOMIC_RELEASE); }
        return calls(100);
    }
    if (!strcmp(m, "forged-wait")) {
        long r = ks_hostcall_exit(KS_HC_MAILBOX_WAIT, (long)box->request + 12345, 0, 0, 0, 0, 0);
        printf("result=%ld\n", r);
        return 0;
    }
    if (!strcmp(m, "post-and-spin")) {
        box->number = ECHO;
        __atomic_store_n(&box->request, box->request + 1, __ATOMIC_RELEASE);
        for (;;) __builtin_ia32_pause();
    }
    if (!strcmp(m, "race")) {
        // Post a call whose handler writes guest memory, and without waiting make built-in calls
        // that write guest memory too: the host must never run both at once.
        static char buffer[256];
        ks_ready();
        for (long i = 0; i < n; i++) {
            box->number = ECHO + 1;
            box->args[0] = (unsigned long)buffer; box->args[1] = sizeof buffer;
            unsigned long sequence = box->request + 1;
            __atomic_store_n(&box->request, sequence, __ATOMIC_RELEASE);
            struct { long long sec, nsec; } ts;
            ks_hostcall_exit(KS_HC_CLOCK_GETTIME, 1, (long)&ts, 0, 0, 0, 0);
            while (__atomic_load_n(&box->response, __ATOMIC_ACQUIRE) != sequence && box->polling) __builtin_ia32_pause();
        }
        printf("ok\n");
        return 0;
    }
    if (!strcmp(m, "call-forever")) for (;;) ks_hostcall(ECHO, 1, 0, 0, 0, 0, 0);
    return 100;
}
