// Small calls real programs make that the Linux layer once answered ENOSYS or wrongly (the
// compatibility issue): modes, times, sizes, owners, fchdir, statfs, O_PATH, CPU clocks,
// getrusage/times, mlock, and the identities of devices, pipes and standard streams.
// Run with argv[2] a writable grant and argv[3] a read-only one; prints one line per group.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/times.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case 0: return "0"; case EROFS: return "EROFS"; case EPERM: return "EPERM"; case EBADF: return "EBADF";
    case ENOENT: return "ENOENT"; case EINVAL: return "EINVAL"; case ENOSYS: return "ENOSYS"; case ENOTDIR: return "ENOTDIR";
    default: return "other";
    }
}
static const char *result(long value) { return name(value < 0 ? errno : 0); }
static char *join(char *buffer, const char *directory, const char *leaf) {
    snprintf(buffer, 512, "%s/%s", directory, leaf);
    return buffer;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *rw = argv[2], *ro = argv[3];
    char a[512];
    struct stat st;
    // Modes: permission bits change, special bits never; a read-only grant refuses.
    int fd = creat(join(a, rw, "f"), 0600);
    printf("creat=%s ", result(fd));
    printf("chmod=%s ", result(chmod(a, 04755)));
    stat(a, &st);
    printf("mode=%o ", st.st_mode & 07777);
    printf("fchmod=%s ", result(fchmod(fd, 0640)));
    fstat(fd, &st);
    printf("fmode=%o ", st.st_mode & 07777);
    printf("ro=%s\n", result(chmod(join(a, ro, "r"), 0777)));
    // Times and sizes.
    struct timespec stamps[2] = {{1000000000, 0}, {1234567890, 500}};
    printf("utimensat=%s ", result(utimensat(AT_FDCWD, join(a, rw, "f"), stamps, 0)));
    stat(a, &st);
    printf("mtime=%ld ", (long)st.st_mtime);
    printf("ftruncate=%s ", result(ftruncate(fd, 10000)));
    fstat(fd, &st);
    printf("size=%ld ", (long)st.st_size);
    printf("truncate=%s ", result(truncate(join(a, rw, "f"), 3)));
    stat(a, &st);
    printf("size=%ld ", (long)st.st_size);
    printf("fallocate=%s ", result(fallocate(fd, 0, 0, 8192)));
    printf("ro-truncate=%s\n", result(truncate(join(a, ro, "r"), 0)));
    // Owners: only to what they are.
    stat(join(a, rw, "f"), &st);
    printf("chown-same=%s ", result(chown(a, st.st_uid, st.st_gid)));
    printf("chown-keep=%s ", result(chown(a, -1, -1)));
    printf("chown-other=%s\n", result(chown(a, st.st_uid + 4242, -1)));
    // fchdir, O_PATH, statfs.
    int directory = open(rw, O_RDONLY | O_DIRECTORY);
    printf("fchdir=%s ", result(fchdir(directory)));
    printf("relative=%s ", result(stat("f", &st)));
    int path = open("f", O_PATH);
    char byte;
    printf("opath=%s read=%s ", result(path), result(read(path, &byte, 1)));
    printf("fstat-opath=%s ", result(fstat(path, &st)));
    struct statfs fs;
    const char *asked = result(statfs(rw, &fs));  // before f_bsize is read (argument order is unspecified)
    printf("statfs=%s bsize=%ld ", asked, (long)fs.f_bsize);
    printf("fstatfs=%s\n", result(fstatfs(fd, &fs)));
    // CPU time, getrusage, times, mlock.
    volatile unsigned long spin = 0;
    for (unsigned long i = 0; i < 200000000UL; i++) spin += i;
    struct timespec cpu, thread;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &thread);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    struct tms tms;
    times(&tms);
    printf("cpu=%s thread=%s rusage=%s times=%s ", cpu.tv_sec > 0 || cpu.tv_nsec > 10000000 ? "ran" : "zero",
           thread.tv_sec > 0 || thread.tv_nsec > 10000000 ? "ran" : "zero",
           usage.ru_utime.tv_sec > 0 || usage.ru_utime.tv_usec > 10000 ? "ran" : "zero", tms.tms_utime > 0 ? "ran" : "zero");
    static char locked[4096];
    printf("mlock=%s\n", result(mlock(locked, sizeof locked)));
    // Identities: /dev/null is a character device 1:3; stdout is a pipe of its own; two
    // pipes differ.
    struct stat null, out, p0, p1;
    stat("/dev/null", &null);
    fstat(1, &out);
    int first[2], second[2];
    pipe(first);
    pipe(second);
    fstat(first[0], &p0);
    fstat(second[0], &p1);
    printf("null=%s rdev=%u:%u stdout-differs=%d pipes-differ=%d\n", S_ISCHR(null.st_mode) ? "chr" : "other",
           major(null.st_rdev), minor(null.st_rdev), null.st_dev != out.st_dev || null.st_ino != out.st_ino, p0.st_ino != p1.st_ino);
    // timerfd: a blocking read waits for the first expiration.
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec spec = {{0, 10000000}, {0, 20000000}}, left;
    timerfd_settime(timer, 0, &spec, 0);
    uint64_t expirations = 0;
    long got = read(timer, &expirations, 8);
    timerfd_gettime(timer, &left);
    printf("timerfd=%s read=%ld expirations=%s interval=%ld\n", result(timer), got, expirations >= 1 ? "some" : "none",
           (long)left.it_interval.tv_nsec);
    // select/pselect: a pipe with data is readable and its write end writable; an empty one
    // is not (a zero timeout returns 0); select with no descriptors sleeps; a closed fd is EBADF.
    write(first[1], "x", 1);
    fd_set readable, writable;
    FD_ZERO(&readable); FD_ZERO(&writable);
    FD_SET(first[0], &readable); FD_SET(second[0], &readable); FD_SET(first[1], &writable);
    struct timeval zero = {0, 0};
    int n = select(first[1] > second[0] ? first[1] + 1 : second[0] + 1, &readable, &writable, 0, &zero);
    printf("select=%d data=%d empty=%d out=%d ", n, FD_ISSET(first[0], &readable) != 0, FD_ISSET(second[0], &readable) != 0,
           FD_ISSET(first[1], &writable) != 0);
    struct timespec before, after, pause = {0, 20000000};
    clock_gettime(CLOCK_MONOTONIC, &before);
    FD_ZERO(&readable); FD_SET(second[0], &readable);
    n = pselect(second[0] + 1, &readable, 0, 0, &pause, 0);
    clock_gettime(CLOCK_MONOTONIC, &after);
    long waited = (after.tv_sec - before.tv_sec) * 1000 + (after.tv_nsec - before.tv_nsec) / 1000000;
    printf("pselect=%d waited=%s ", n, waited >= 15 ? "yes" : "no");
    close(second[1]);
    FD_ZERO(&readable); FD_SET(second[0], &readable);
    printf("eof=%d ", select(second[0] + 1, &readable, 0, 0, &zero));
    int closed = dup(0);
    close(closed);
    FD_ZERO(&readable); FD_SET(closed, &readable);
    printf("badf=%s\n", result(select(closed + 1, &readable, 0, 0, &zero)));
    // copy_file_range and sendfile between host files (offsets explicit and implicit); to a
    // stream they answer EINVAL (callers fall back to read and write).
    int source = open(join(a, rw, "src"), O_CREAT | O_RDWR | O_TRUNC, 0600);
    write(source, "hello world", 11);
    int copy = open(join(a, rw, "copy"), O_CREAT | O_RDWR | O_TRUNC, 0600);
    loff_t from = 0;
    long copied = copy_file_range(source, &from, copy, 0, 100, 0);
    off_t at = 6;
    long sent = sendfile(copy, source, &at, 5);
    char back[32] = {0};
    pread(copy, back, sizeof back - 1, 0);
    printf("copy_file_range=%ld from=%lld sendfile=%ld at=%lld data=%s stream=%s\n", copied, (long long)from, sent, (long long)at, back,
           result(sendfile(1, source, &at, 1)));
    return 0;
}
