// Attempts to change host files outside the grants (security round 3), run unmodified on the
// Linux personality. One mode per argv[1]; each prints the errno of every attempt, so a test
// compares one line with what Linux answers for the same calls.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#define FUTEX_WAIT 0  /* <linux/futex.h> is not in musl's headers */
#define FUTEX_WAKE 1
#include <signal.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case 0: return "0"; case EACCES: return "EACCES"; case EROFS: return "EROFS"; case EBUSY: return "EBUSY";
    case ENOENT: return "ENOENT"; case EXDEV: return "EXDEV"; case EPERM: return "EPERM"; case EINVAL: return "EINVAL";
    case ELOOP: return "ELOOP"; case EISDIR: return "EISDIR"; case EEXIST: return "EEXIST"; case EBADF: return "EBADF"; case ENOSPC: return "ENOSPC"; case ENOMEM: return "ENOMEM"; case EMFILE: return "EMFILE"; case EAGAIN: return "EAGAIN";
    default: return "other";
    }
}

/// The errno of a call that returns -1 on failure, or "0".
static const char *result(long value) { return name(value < 0 ? errno : 0); }

static char *join(char *buffer, const char *directory, const char *leaf) {
    snprintf(buffer, 512, "%s/%s", directory, leaf);
    return buffer;
}

static void *thread(void *argument) { return argument; }

static volatile int signals, alarms;
static void count_signal(int number) { (void)number; signals++; }
static void count_alarm(int number) { (void)number; alarms++; }

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    char a[512], b[512];
    if (!strcmp(m, "setuid") && argc > 2) {  // umask(0), then ask for every special bit
        umask(0);
        int fd = open(join(a, argv[2], "suid"), O_WRONLY | O_CREAT | O_TRUNC, 06777);
        printf("open=%s ", result(fd));
        if (fd >= 0) close(fd);
        printf("mkdir=%s ", result(mkdir(join(a, argv[2], "sdir"), 07777)));
        // An existing setuid file (the host made it) loses the bits when the guest writes it.
        fd = open(join(a, argv[2], "existing"), O_WRONLY | O_TRUNC);
        printf("rewrite=%s\n", result(fd >= 0 ? write(fd, "x", 1) : -1));
        return 0;
    }
    if (!strcmp(m, "links") && argc > 2) {  // name changes through links into a read-only grant
        const char *rw = argv[2];
        printf("unlink-abs=%s ", result(unlink(join(a, rw, "abs/victim"))));
        printf("unlink-rel=%s ", result(unlink(join(a, rw, "rel/victim"))));
        printf("mkdir=%s ", result(mkdir(join(a, rw, "abs/made"), 0755)));
        printf("rmdir=%s ", result(rmdir(join(a, rw, "rel/keep"))));
        printf("rename-out=%s ", result(rename(join(a, rw, "rel/victim"), join(b, rw, "stolen"))));
        printf("rename-in=%s ", result(rename(join(a, rw, "mine"), join(b, rw, "abs/planted"))));
        printf("create=%s ", result(open(join(a, rw, "rel/created"), O_WRONLY | O_CREAT, 0644)));
        printf("dangling=%s ", result(open(join(a, rw, "dangling"), O_WRONLY | O_CREAT, 0644)));
        printf("nested=%s ", result(unlink(join(a, rw, "inner-link/victim"))));
        // Inside the writable grant, links keep working.
        printf("own=%s\n", result(unlink(join(a, rw, "own-link/scratch"))));
        return 0;
    }
    if (!strcmp(m, "mounts") && argc > 3) {  // grant roots behave as mount points: EBUSY
        const char *d = argv[2], *s = argv[3];
        printf("out=%s ", result(rename(join(a, d, "out"), join(b, s, "moved"))));
        printf("in=%s ", result(rename(join(a, s, "evil"), join(b, d, "out"))));
        printf("rmdir=%s ", result(rmdir(join(a, d, "out"))));
        printf("across=%s ", result(rename(join(a, s, "evil"), join(b, d, "out/evil"))));
        printf("inner=%s ", result(rename(join(a, s, "inner"), join(b, s, "renamed"))));
        printf("inner-rmdir=%s ", result(rmdir(join(a, s, "inner"))));
        printf("over-inner=%s ", result(rename(join(a, s, "evil"), join(b, s, "inner"))));
        printf("tmp=%s ", result(rmdir("/memory")));
        printf("tmp-rename=%s\n", result(rename("/memory", join(a, s, "tmp"))));
        return 0;
    }
    if (!strcmp(m, "proc-fd") && argc > 2) {  // reopening a read-only file for writing
        int fd = open(argv[2], O_RDONLY);
        snprintf(a, sizeof a, "/proc/self/fd/%d", fd);
        printf("rdwr=%s ", result(open(a, O_RDWR)));
        printf("wronly=%s ", result(open(a, O_WRONLY)));
        printf("rdonly=%s\n", result(open(a, O_RDONLY) >= 0 ? 0 : -1));
        return 0;
    }
    if (!strcmp(m, "dev-std")) {  // /dev/stdout and friends
        int fd = open("/dev/stdout", O_WRONLY);
        if (fd >= 0) write(fd, "via /dev/stdout\n", 16);
        ssize_t n = readlink("/dev/stdin", a, sizeof a - 1);
        a[n > 0 ? n : 0] = 0;
        struct stat st;
        printf("stdout=%s stdin->%s stderr=%s\n", result(fd), a, result(stat("/dev/stderr", &st)));
        return 0;
    }
    if (!strcmp(m, "listings") && argc > 3) {  // many open descriptors of a huge directory
        int opened = 0, wanted = atoi(argv[3]);
        for (int i = 0; i < wanted; i++) {
            DIR *dir = opendir(argv[2]);  // left open: the host must not hold its listing
            if (!dir || !readdir(dir)) break;
            opened++;
        }
        DIR *dir = opendir(argv[2]);
        long count = 0, again = 0, mark = 0, marked = 0;
        char name[256] = "";
        for (struct dirent *e; (e = readdir(dir));) {
            if (++count == 1000) { mark = telldir(dir); }
            if (count == 1001) snprintf(name, sizeof name, "%s", e->d_name);
        }
        seekdir(dir, mark);
        struct dirent *e = readdir(dir);
        marked = e && !strcmp(e->d_name, name);
        rewinddir(dir);
        while (readdir(dir)) again++;
        printf("opened=%d count=%ld again=%ld seek=%ld\n", opened, count, again, marked);
        return 0;
    }
    if (!strcmp(m, "layout")) {  // the addresses ASLR moves, and AT_RANDOM's first bytes
        int local = 0;
        void *mapped = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        const unsigned char *random = (const unsigned char *)getauxval(AT_RANDOM);
        printf("stack=%p brk=%p mmap=%p main=%p random=%02x%02x%02x%02x\n", (void *)&local, sbrk(0), mapped, (void *)main,
               random[0], random[1], random[2], random[3]);
        return 0;
    }
    if (!strcmp(m, "tmpfs-names")) {  // files with ~4 KiB paths in the tmpfs at /memory
        char path[4096] = "/memory";
        for (int level = 0; level < 15; level++) {  // 15 directories of 250-character names
            size_t length = strlen(path);
            path[length] = '/';
            memset(path + length + 1, 'a' + level, 250);
            path[length + 251] = 0;
            if (mkdir(path, 0755) != 0) { printf("mkdir: %s\n", name(errno)); return 0; }
        }
        size_t base = strlen(path);
        int created = 0, error = 0;
        for (; created < 100000; created++) {
            snprintf(path + base, sizeof path - base, "/%0200d", created);
            int fd = open(path, O_WRONLY | O_CREAT, 0644);
            if (fd < 0) { error = errno; break; }
            close(fd);
        }
        printf("created=%s error=%s\n", created > 1000 && created < 20000 ? "some" : "wrong", name(error));
        return 0;
    }
    if (!strcmp(m, "pipes")) {  // pipes until the host budget is spent
        int fds[2], count = 0;
        while (count < 600 && pipe(fds) == 0) count++;
        int error = errno;
        printf("pipes=%s error=%s\n", count > 10 && count < 200 ? "some" : "wrong", name(error));
        return 0;
    }
    if (!strcmp(m, "disk") && argc > 2) {  // a 1 MiB quota: writes, creates, removal
        static char block[65536];
        memset(block, 'q', sizeof block);
        int fd = open(join(a, argv[2], "big"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        long written = 0;
        ssize_t n;
        while ((n = write(fd, block, sizeof block)) > 0) written += n;
        int error = errno;
        close(fd);
        printf("written=%s error=%s ", written >= 768 * 1024 && written <= 1024 * 1024 ? "some" : "wrong", name(error));
        printf("mkdir=%s ", result(mkdir(join(a, argv[2], "d"), 0755)));
        printf("unlink=%s ", result(unlink(join(a, argv[2], "big"))));
        printf("mkdir-after=%s ", result(mkdir(join(a, argv[2], "d"), 0755)));
        fd = open(join(a, argv[2], "again"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        printf("rewrite=%s\n", result(write(fd, block, sizeof block)));
        return 0;
    }
    if (!strcmp(m, "storms")) {  // signals, eventfds, futexes, timers and epoll sets, many at once
        signal(SIGUSR1, count_signal);
        for (int i = 0; i < 5000; i++) raise(SIGUSR1);
        printf("signals=%d ", signals);
        int counter = eventfd(0, EFD_NONBLOCK);
        uint64_t value = UINT64_MAX - 1;
        long first = write(counter, &value, 8);
        value = 1;
        long overflow = write(counter, &value, 8);
        printf("eventfd=%ld,%s ", first, result(overflow));
        static int words[4096];
        long woken = 0, again = 0;
        for (int i = 0; i < 5000; i++) {
            woken += syscall(SYS_futex, &words[i % 4096], FUTEX_WAKE, 1000, 0, 0, 0);
            if (syscall(SYS_futex, &words[i % 4096], FUTEX_WAIT, 1, 0, 0, 0) == -1 && errno == EAGAIN) again++;
        }
        struct timespec zero = {0, 0};
        long timed = syscall(SYS_futex, &words[0], FUTEX_WAIT, 0, &zero, 0, 0);
        printf("futex=%ld,%ld,%s ", woken, again, name(timed == -1 && errno == ETIMEDOUT ? 0 : -1));
        signal(SIGALRM, count_alarm);
        struct itimerval fast = {{0, 1}, {0, 1}}, off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &fast, 0);
        for (volatile long spin = 0; alarms < 50 && spin < 4000000000L; spin++) {}
        setitimer(ITIMER_REAL, &off, 0);
        printf("alarms=%s ", alarms >= 50 ? "many" : "few");
        int sets = 0;
        while (sets < 2000 && epoll_create1(0) >= 0) sets++;
        printf("epoll=%s,%s\n", sets > 100 ? "many" : "few", name(errno));
        return 0;
    }
    if (!strcmp(m, "make-links") && argc > 3) {  // symlink and link: inside one writable grant only
        const char *rw = argv[2], *ro = argv[3];
        printf("symlink=%s ", result(symlink("/etc/shadow", join(a, rw, "to-shadow"))));
        printf("through=%s ", result(open(join(a, rw, "to-shadow"), O_RDONLY)));
        printf("relative=%s ", result(symlink("mine", join(a, rw, "to-mine"))));
        printf("read=%s ", result(open(join(a, rw, "to-mine"), O_RDONLY)));
        printf("link=%s ", result(link(join(a, rw, "mine"), join(b, rw, "mine-too"))));
        printf("from-ro=%s ", result(link(join(a, ro, "r"), join(b, rw, "stolen"))));
        printf("into-ro=%s ", result(link(join(a, rw, "mine"), join(b, ro, "planted"))));
        printf("symlink-ro=%s\n", result(symlink("x", join(a, ro, "link"))));
        return 0;
    }
    if (!strcmp(m, "thread")) {  // pthread_create (musl's clone carries CLONE_DETACHED)
        pthread_t t;
        int error = pthread_create(&t, 0, thread, (void *)42);
        void *value = 0;
        if (!error) pthread_join(t, &value);
        printf("create=%s joined=%ld\n", name(error), (long)value);
        return 0;
    }
    return 2;
}
