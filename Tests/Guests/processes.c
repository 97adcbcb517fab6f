/* Processes (ProcessTests): fork, wait statuses, pipes between processes, execve, a fork bomb
   against the process limit, kill(-1) inside the sandbox, and a child that never ends.
   Hostile by design: never run it natively outside `unshare -p -f --mount-proc`. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <semaphore.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name(int error) {
    switch (error) {
    case EAGAIN: return "EAGAIN";
    case ECHILD: return "ECHILD";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EPERM: return "EPERM";
    case EADDRINUSE: return "EADDRINUSE";
    default: return "other";
    }
}

/* Exit statuses, a signaled child, WNOHANG, getppid, and a pipe from child to parent. */
static int waits(void) {
    pid_t parent = getpid();
    int fds[2];
    if (pipe(fds) != 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        close(fds[0]);
        char line[64];
        int n = snprintf(line, sizeof line, "child sees parent=%d", getppid() == parent);
        write(fds[1], line, (size_t)n);
        _exit(7);
    }
    close(fds[1]);
    char buffer[64] = {0};
    ssize_t got = read(fds[0], buffer, sizeof buffer - 1);
    int status = 0;
    pid_t reaped = waitpid(child, &status, 0);
    printf("%s (%zd bytes), reaped=%d exited=%d status=%d\n", buffer, got, reaped == child,
           WIFEXITED(status), WEXITSTATUS(status));
    char rest;
    printf("eof after the writer exited: %zd\n", read(fds[0], &rest, 1));

    pid_t victim = fork();
    if (victim == 0) { raise(SIGTERM); _exit(0); }
    waitpid(victim, &status, 0);
    printf("signaled=%d signal=%d\n", WIFSIGNALED(status), WTERMSIG(status));

    pid_t sleeper = fork();
    if (sleeper == 0) { pause(); _exit(0); }
    printf("wnohang=%d\n", waitpid(sleeper, &status, WNOHANG));
    kill(sleeper, SIGKILL);
    waitpid(sleeper, &status, 0);
    printf("killed=%d\n", WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    errno = 0;
    pid_t none = waitpid(-1, &status, 0);  /* (errno read after the call) */
    printf("no children: %d %s\n", none, name(errno));
    return 0;
}

/* Forks children that wait until the process limit refuses one; then ends them all by PID. */
static int bomb(void) {
    pid_t children[1024];
    int count = 0;
    for (;;) {
        if (count == 1024) break;
        pid_t child = fork();
        if (child == 0) { pause(); _exit(0); }
        if (child < 0) {
            printf("forked %d, then %s\n", count, name(errno));
            break;
        }
        children[count++] = child;
    }
    for (int i = 0; i < count; i++) kill(children[i], SIGKILL);
    int reaped = 0, status;
    while (wait(&status) > 0) reaped++;
    printf("reaped %d\n", reaped);
    return 0;
}

/* kill(-1, SIGKILL) reaches every process of the sandbox but the caller, nothing outside. */
static int killAll(void) {
    for (int i = 0; i < 3; i++)
        if (fork() == 0) { pause(); _exit(0); }
    int result = kill(-1, SIGKILL);
    int killed = 0, status;
    while (wait(&status) > 0)
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) killed++;
    printf("kill(-1)=%d killed=%d, the caller survived\n", result, killed);
    errno = 0;
    int outside = kill(4242, 0);
    printf("kill(pid 4242)=%d %s\n", outside, name(errno));
    return 0;
}

/* execve of argv[2] (with the rest as its arguments), reporting the errno if it fails. */
static int exec(int argc, char **argv) {
    if (argc < 4) return 2;
    pid_t child = fork();
    if (child == 0) {
        execv(argv[2], argv + 3);
        printf("execve %s: %s\n", argv[2], name(errno));
        _exit(127);
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("exit status %d\n", WEXITSTATUS(status));
    return 0;
}

static volatile sig_atomic_t handled;
static void onSignal(int signo) { handled |= 1 << signo; }

/* sigsuspend waits for a child's SIGUSR1 with it unblocked, then the old mask is back; pause
   ends for SIGCHLD when it has a handler. */
static int suspend(void) {
    signal(SIGUSR1, onSignal);
    signal(SIGCHLD, onSignal);
    sigset_t blocked, empty, now;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigprocmask(SIG_BLOCK, &blocked, 0);
    pid_t first = fork();
    if (first == 0) { kill(getppid(), SIGUSR1); _exit(0); }
    sigemptyset(&empty);
    int result = sigsuspend(&empty);
    int error = errno;
    sigprocmask(SIG_BLOCK, 0, &now);
    printf("sigsuspend=%d %s usr1=%d still blocked=%d\n", result, error == EINTR ? "EINTR" : "other",
           (handled >> SIGUSR1) & 1, sigismember(&now, SIGUSR1));
    waitpid(first, 0, 0);
    handled = 0;
    if (fork() == 0) { usleep(200000); _exit(0); }
    pause();  /* the child's SIGCHLD, 0.2 s later */
    printf("pause ended by SIGCHLD: %d\n", (handled >> SIGCHLD) & 1);
    return 0;
}

/* An orphan goes to pid 1 (the first process), and PR_SET_PDEATHSIG kills it when its parent ends. */
static int orphans(void) {
    pid_t middle = fork();
    if (middle == 0) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            pause();
            _exit(0);
        }
        usleep(200000);
        _exit(3);
    }
    int status;
    waitpid(middle, &status, 0);
    printf("middle exited %d\n", WEXITSTATUS(status));
    pid_t orphan = wait(&status);
    printf("orphan reaped by pid 1: %d, killed by %d\n", orphan > 0, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return 0;
}

/* Selectors a guest may pass that have no negation (INT_MIN) or no meaning: errors, as Linux. */
static int extremes(void) {
    pid_t child = fork();
    if (child == 0) { pause(); _exit(0); }
    int status;
    siginfo_t info;
    errno = 0;
    int killed = kill(-2147483647 - 1, 0);
    int killError = errno;
    errno = 0;
    int waited = waitpid(-2147483647 - 1, &status, WNOHANG);
    int waitError = errno;
    errno = 0;
    int group = syscall(SYS_waitid, P_PGID, (id_t)-5, &info, WEXITED | WNOHANG, 0);
    int groupError = errno;
    errno = 0;
    int lowest = syscall(SYS_waitid, P_PGID, (id_t)0x80000000u, &info, WEXITED | WNOHANG, 0);
    int lowestError = errno;
    printf("kill(INT_MIN)=%d %s waitpid(INT_MIN)=%d %s waitid(P_PGID,-5)=%d %s waitid(P_PGID,INT_MIN)=%d %s\n",
           killed, name(killError), waited, name(waitError), group, groupError == EINVAL ? "EINVAL" : name(groupError),
           lowest, lowestError == EINVAL ? "EINVAL" : name(lowestError));
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    return 0;
}

/* Shared memory between processes: an anonymous MAP_SHARED area with a counter and two
   process-shared semaphores (futex waits and wakes across processes) played ping-pong 1000
   times; a POSIX shared-memory object a child creates by name and its parent opens after; a
   MADV_DONTNEED that keeps shared contents; a private mapping made after munmap that stays
   private. Prints the same natively. */
static int shared(void) {
    struct area { sem_t ping, pong; volatile int counter; } *a =
        mmap(0, sizeof *a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) { printf("mmap: %s\n", name(errno)); return 1; }
    sem_init(&a->ping, 1, 0);
    sem_init(&a->pong, 1, 0);
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < 1000; i++) { sem_wait(&a->ping); a->counter++; sem_post(&a->pong); }
        _exit(0);
    }
    for (int i = 0; i < 1000; i++) { sem_post(&a->ping); sem_wait(&a->pong); }
    int status;
    waitpid(child, &status, 0);
    printf("ping-pong counter=%d child status=%d\n", a->counter, WEXITSTATUS(status));

    if ((child = fork()) == 0) {
        int fd = shm_open("/kvmsandbox-test", O_CREAT | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, 8192) != 0) _exit(1);
        char *p = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) _exit(2);
        strcpy(p + 4096, "written by the child");
        _exit(0);
    }
    waitpid(child, &status, 0);
    int fd = shm_open("/kvmsandbox-test", O_RDWR, 0);
    char *q = fd < 0 ? MAP_FAILED : mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    printf("shm_open: child status=%d, parent reads \"%s\"\n", WEXITSTATUS(status), q == MAP_FAILED ? "(none)" : q + 4096);
    shm_unlink("/kvmsandbox-test");

    madvise((void *)a, 4096, MADV_DONTNEED);
    printf("after MADV_DONTNEED counter=%d\n", a->counter);
    munmap((void *)a, 4096);
    volatile int *b = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    *b = 7;
    if ((child = fork()) == 0) { *b = 9; _exit(0); }
    waitpid(child, &status, 0);
    printf("private after fork: %d\n", *b);
    return 0;
}

/* Shared memory never becomes executable in the sandbox (W^X across processes; Linux allows it). */
static int sharedExec(void) {
    void *a = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int rx = mprotect(a, 4096, PROT_READ | PROT_EXEC);
    printf("mprotect(shared, PROT_EXEC)=%d %s\n", rx, rx ? name(errno) : "");
    void *x = mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    printf("mmap(shared, PROT_EXEC) failed=%d %s\n", x == MAP_FAILED, x == MAP_FAILED ? name(errno) : "");
    return 0;
}

/* Hostile use of shared memory: a timed wait on a process-shared semaphore nobody posts ends
   with ETIMEDOUT; mapping and unmapping shared memory forever stops at the per-VM limit with
   ENOMEM (the host process's mappings are a shared resource), and private memory still works. */
static int sharedLimits(void) {
    sem_t *s = mmap(0, sizeof(sem_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    sem_init(s, 1, 0);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += 50000000;
    if (deadline.tv_nsec >= 1000000000) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000; }
    int timed = sem_timedwait(s, &deadline);
    printf("sem_timedwait=%d %s\n", timed, timed ? (errno == ETIMEDOUT ? "ETIMEDOUT" : name(errno)) : "");
    int mapped = 0, error = 0;
    for (int i = 0; i < 2000; i++) {
        void *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { error = errno; break; }
        mapped++;
        munmap(p, 4096);
    }
    volatile char *private = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    private[0] = 1;
    printf("shared mappings before refusal: %s %s, private still works: %d\n", mapped >= 2000 ? "all" : "some",
           error == ENOMEM ? "ENOMEM" : name(error), private[0]);
    return 0;
}

/* AF_UNIX stream sockets between processes: a path and an abstract name, each bound by the
   parent, connected to by a child that writes, accepted after poll says so; a second bind of a
   name, a connect to a name nobody bound or one unlinked since, a connect before listen. */
static int unixSockets(void) {
    const char *names[] = {"/tmp/kvmsandbox-test.sock", "@kvmsandbox-abstract"};
    for (int n = 0; n < 2; n++) {
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        strcpy(address.sun_path, names[n]);
        socklen_t length = offsetof(struct sockaddr_un, sun_path) + strlen(names[n]) + (n == 0);
        if (n == 1) address.sun_path[0] = 0;  /* abstract: a leading NUL, no terminator */
        int listener = socket(AF_UNIX, SOCK_STREAM, 0);
        if (n == 0) unlink(names[n]);
        int bound = bind(listener, (struct sockaddr *)&address, length);
        int again = socket(AF_UNIX, SOCK_STREAM, 0);
        int twice = bind(again, (struct sockaddr *)&address, length);
        int twiceError = errno;
        int early = socket(AF_UNIX, SOCK_STREAM, 0);
        int refused = connect(early, (struct sockaddr *)&address, length);
        int refusedError = errno;
        listen(listener, 8);
        pid_t child = fork();
        if (child == 0) {
            int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (connect(s, (struct sockaddr *)&address, length) != 0) _exit(1);
            const char *text = "hello through a unix socket";
            _exit(write(s, text, strlen(text)) == (ssize_t)strlen(text) ? 0 : 2);
        }
        struct pollfd ready = {.fd = listener, .events = POLLIN};
        int polled = poll(&ready, 1, 10000);
        int connection = accept(listener, 0, 0);
        char buffer[64] = {0};
        ssize_t got = 0, n1;
        while ((n1 = read(connection, buffer + got, sizeof buffer - 1 - got)) > 0) got += n1;
        int status;
        waitpid(child, &status, 0);
        printf("%s: bind=%d again=%d %s, connect before listen=%d %s, poll=%d, read \"%s\", child status=%d\n",
               n == 0 ? "path" : "abstract", bound, twice, name(twiceError), refused,
               refusedError == ECONNREFUSED ? "ECONNREFUSED" : name(refusedError), polled, buffer, WEXITSTATUS(status));
        close(connection);
        close(listener);
        if (n == 0) {
            unlink(names[n]);
            int late = socket(AF_UNIX, SOCK_STREAM, 0);
            int gone = connect(late, (struct sockaddr *)&address, length);
            printf("after unlink: connect=%d %s\n", gone, name(errno));
        }
    }
    return 0;
}

/* Guest memory is recycled between processes (RecycledMemory): what one process wrote must
   never be seen by the next. Children fill 32 MiB with 0xab and end; the children forked after
   them, and a program they exec, must find fresh memory zero. */
static int freshMemoryIsZero(void) {
    size_t n = 32 << 20;
    unsigned char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    for (size_t i = 0; i < n; i += 256) if (p[i]) return 1;
    return 0;
}

static int recycle(char **argv) {
    int dirty = 0, forkSawDirt = 0, execSawDirt = 0, execFailed = 0, status;
    for (int round = 0; round < 6; round++) {
        pid_t filler = fork();
        if (filler == 0) {
            size_t n = 32 << 20;
            unsigned char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            memset(p, 0xab, n);
            _exit(0);
        }
        waitpid(filler, &status, 0);
        dirty += WEXITSTATUS(status) == 0;
        pid_t checker = fork();
        if (checker == 0) {
            if (round % 2) { execl(argv[0], argv[0], "zero", (char *)0); _exit(9); }
            _exit(freshMemoryIsZero());
        }
        waitpid(checker, &status, 0);
        if (WEXITSTATUS(status) == 9) execFailed++;
        else if (WEXITSTATUS(status) != 0) { if (round % 2) execSawDirt++; else forkSawDirt++; }
    }
    printf("fillers=%d, forks that saw another's bytes=%d, execs that did=%d (failed: %d)\n", dirty, forkSawDirt, execSawDirt, execFailed);
    return 0;
}

/* A child that computes forever while the parent waits for it: only the timeout ends it. */
static int forever(void) {
    pid_t child = fork();
    if (child == 0) { for (volatile unsigned long i = 0;; i++) {} }
    int status;
    waitpid(child, &status, 0);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IONBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "waits")) return waits();
    if (!strcmp(mode, "bomb")) return bomb();
    if (!strcmp(mode, "kill-all")) return killAll();
    if (!strcmp(mode, "exec")) return exec(argc, argv);
    if (!strcmp(mode, "forever")) return forever();
    if (!strcmp(mode, "suspend")) return suspend();
    if (!strcmp(mode, "orphans")) return orphans();
    if (!strcmp(mode, "extremes")) return extremes();
    if (!strcmp(mode, "shared")) return shared();
    if (!strcmp(mode, "shared-exec")) return sharedExec();
    if (!strcmp(mode, "shared-limits")) return sharedLimits();
    if (!strcmp(mode, "unix")) return unixSockets();
    if (!strcmp(mode, "recycle")) return recycle(argv);
    if (!strcmp(mode, "zero")) return freshMemoryIsZero();
    return 2;
}
