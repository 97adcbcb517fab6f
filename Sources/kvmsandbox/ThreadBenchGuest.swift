/// The C source of the threads-and-signals benchmark guest (built with `gcc -static -pthread`,
/// so the same binary runs in the sandbox and as a process): `pingpong N` (two threads handing a
/// futex word back and forth), `yield N` (two threads calling `sched_yield`), `signal N`
/// (`raise(SIGUSR1)` with a handler: the signal, its delivery and `rt_sigreturn`).
enum ThreadBenchGuest {
    static let source = #"""
    #include <linux/futex.h>
    #include <pthread.h>
    #include <signal.h>
    #include <stdatomic.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/syscall.h>
    #include <unistd.h>

    static atomic_int turn;
    static long rounds;

    static void wait_for(int value) {
        while (atomic_load(&turn) != value) syscall(SYS_futex, &turn, FUTEX_WAIT_PRIVATE, !value, 0, 0, 0);
    }
    static void hand_to(int value) {
        atomic_store(&turn, value);
        syscall(SYS_futex, &turn, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0);
    }
    static void *pong(void *arg) {
        for (long i = 0; i < rounds; i++) { wait_for(1); hand_to(0); }
        return 0;
    }
    static void *yielder(void *arg) {
        for (long i = 0; i < rounds; i++) sched_yield();
        return 0;
    }
    static volatile long handled;
    static void handler(int signo) { handled++; }

    int main(int argc, char **argv) {
        if (argc < 3) return 2;
        rounds = atol(argv[2]);
        pthread_t thread;
        if (!strcmp(argv[1], "pingpong")) {
            pthread_create(&thread, 0, pong, 0);
            for (long i = 0; i < rounds; i++) { hand_to(1); wait_for(0); }
            pthread_join(thread, 0);
        } else if (!strcmp(argv[1], "yield")) {
            pthread_create(&thread, 0, yielder, 0);
            for (long i = 0; i < rounds; i++) sched_yield();
            pthread_join(thread, 0);
        } else if (!strcmp(argv[1], "signal")) {
            signal(SIGUSR1, handler);
            for (long i = 0; i < rounds; i++) raise(SIGUSR1);
            if (handled != rounds) return 1;
        } else {
            return 2;
        }
        return 0;
    }
    """#
}
