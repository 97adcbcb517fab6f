// The vDSO's clocks against the system call's: monotonic never goes back, the two agree, the
// clocks the vDSO does not serve still work (through the system call), and getcpu answers.
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

int main(void) {
    struct timespec a, b, s;
    long long previous = 0, backwards = 0;
    for (int i = 0; i < 20000; i++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (ns(a) < previous) backwards++;
        previous = ns(a);
    }
    printf("backwards %lld\n", backwards);
    int clocks[] = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW, CLOCK_BOOTTIME, CLOCK_REALTIME_COARSE};
    for (int i = 0; i < 5; i++) {
        clock_gettime(clocks[i], &a);
        syscall(SYS_clock_gettime, clocks[i], &s);
        clock_gettime(clocks[i], &b);
        // The vDSO and the host agree within 2 ms (monotonic: in order).
        long long slack = 2000000;
        printf("clock %d %s\n", clocks[i], ns(a) <= ns(s) + slack && ns(s) <= ns(b) + slack && ns(b) - ns(a) < 1000000000LL ? "agrees" : "DIFFERS");
    }
    struct timeval tv;
    gettimeofday(&tv, 0);
    time_t now = time(0);
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &s);
    printf("gettimeofday and time %s\n", (tv.tv_sec - s.tv_sec) * (tv.tv_sec - s.tv_sec) <= 1 && (now - s.tv_sec) * (now - s.tv_sec) <= 1 ? "agree" : "DIFFER");
    printf("cpu time %s\n", clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a) == 0 ? "works" : "FAILS");
    printf("sched_getcpu %d\n", sched_getcpu());
    return 0;
}
