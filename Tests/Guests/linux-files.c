// An ordinary Linux program (no SDK): built by the tests with glibc (gcc -static) and with musl
// (musl-gcc -static), run unmodified on the Linux personality. One mode per argv[1].
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case 0: return "0"; case EACCES: return "EACCES"; case EINVAL: return "EINVAL"; case ENOMEM: return "ENOMEM";
    case ENOENT: return "ENOENT"; case EMFILE: return "EMFILE"; case EFAULT: return "EFAULT"; case EROFS: return "EROFS";
    case EXDEV: return "EXDEV"; case ENXIO: return "ENXIO"; case ELOOP: return "ELOOP"; case ENOTEMPTY: return "ENOTEMPTY"; case EAGAIN: return "EAGAIN"; case EPIPE: return "EPIPE"; default: return "other";
    }
}
static volatile unsigned long huge_count = 1UL << 40;

static int compare(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    if (!strcmp(m, "stdin")) {  // stdio on stdin: count lines and bytes
        char line[256];
        long lines = 0, bytes = 0;
        while (fgets(line, sizeof line, stdin)) { lines++; bytes += (long)strlen(line); }
        printf("lines=%ld bytes=%ld\n", lines, bytes);
        return 0;
    }
    if (!strcmp(m, "files") && argc > 3) {  // read a file, list a directory, write a result
        char path[512];
        snprintf(path, sizeof path, "%s/fruit.txt", argv[2]);
        FILE *in = fopen(path, "r");
        if (!in) { printf("fopen: %s\n", strerror(errno)); return 1; }
        char line[64];
        int count = 0;
        while (fgets(line, sizeof line, in)) count++;
        fclose(in);
        DIR *dir = opendir(argv[2]);
        if (!dir) { printf("opendir: %s\n", strerror(errno)); return 1; }
        char *names[64];
        int n = 0;
        for (struct dirent *e; (e = readdir(dir)) && n < 64;)
            if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
        closedir(dir);
        qsort(names, n, sizeof *names, compare);
        snprintf(path, sizeof path, "%s/result.txt", argv[3]);
        FILE *out = fopen(path, "w");
        if (!out) { printf("fopen out: %s\n", strerror(errno)); return 1; }
        fprintf(out, "%d lines;", count);
        for (int i = 0; i < n; i++) fprintf(out, " %s", names[i]);
        fprintf(out, "\n");
        fclose(out);
        struct stat st;
        if (stat(path, &st) != 0) { printf("stat: %s\n", strerror(errno)); return 1; }
        printf("wrote %ld bytes: %d lines, %d entries\n", (long)st.st_size, count, n);
        return 0;
    }
    if (!strcmp(m, "mmap") && argc > 2) {  // a private read-only file mapping
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) { printf("open: %s\n", strerror(errno)); return 1; }
        struct stat st;
        fstat(fd, &st);
        char *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) { printf("mmap: %s\n", strerror(errno)); return 1; }
        printf("mapped: %.*s", (int)(strchr(p, '\n') - p + 1), p);
        munmap(p, (size_t)st.st_size);
        close(fd);
        return 0;
    }
    if (!strcmp(m, "mprotect")) {  // real permissions, W^X kept
        char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        strcpy(p, "data");
        int ro = mprotect(p, 4096, PROT_READ);
        int exec = mprotect(p, 4096, PROT_READ | PROT_EXEC) == 0 ? 0 : errno;  /* a JIT's RW -> RX flip */
        int stack = mprotect((void *)((unsigned long)&ro & ~4095UL), 4096, PROT_READ | PROT_EXEC) == 0 ? 0 : errno;
        int rwx = mprotect(p, 4096, PROT_READ | PROT_WRITE | PROT_EXEC) == 0 ? 0 : errno;
        int unaligned = mprotect(p + 1, 4096, PROT_READ) == 0 ? 0 : errno;
        int wrapping = mprotect(p, (size_t)-4096, PROT_READ) == 0 ? 0 : errno;
        int unmapped = mprotect((void *)0x100000000000UL, 4096, PROT_READ) == 0 ? 0 : errno;
        printf("ro=%d exec=%s stack-exec=%s rwx=%s unaligned=%s wrapping=%s unmapped=%s still=%s\n", ro, name(exec), name(stack),
               name(rwx), name(unaligned), name(wrapping), name(unmapped), p);
        return 0;
    }
    if (!strcmp(m, "reserve")) {  // PROT_NONE reservations cost nothing; MAP_FIXED and mprotect commit parts
        size_t huge = 1UL << 30;  // far more than the guest's memory
        char *r = mmap(NULL, huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (r == MAP_FAILED) { printf("reserve: %s\n", name(errno)); return 1; }
        char *a = mmap(r + (256 << 20), 16384, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        strcpy(a + 8192, "fixed");
        int p = mprotect(r + (512 << 20), 8192, PROT_READ | PROT_WRITE);
        strcpy(r + (512 << 20) + 4096, "protected");
        void *stub = mmap((void *)0x7ff000001000UL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        int stubErrno = errno;
        void *exec = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        int execErrno = errno;
        printf("fixed=%s%s protect=%d %s over-stub=%s exec-anon=%s\n", a == r + (256 << 20) ? "at-hint:" : "moved:", a + 8192,
               p, r + (512 << 20) + 4096, stub == MAP_FAILED ? name(stubErrno) : "MAPPED", exec == MAP_FAILED ? name(execErrno) : "MAPPED");
        return 0;
    }
    if (!strcmp(m, "shrinking") && argc > 2) {  // the host truncates the file between two reads
        int fd = open(argv[2], O_RDONLY);
        char buffer[8];
        long first = read(fd, buffer, 4);
        long nr = 0x1000, result;  /* the embedder's host call (by out, as the SDK's ks_hostcall does) */
        __asm__ volatile("out %%al, $0x42" : "=a"(result) : "a"(nr) : "memory");
        long second = read(fd, buffer, 4);
        struct stat st;
        fstat(fd, &st);
        long third = pread(fd, buffer, 4, 100);
        printf("first=%ld host=%ld second=%ld size=%ld beyond=%ld\n", first, result, second, (long)st.st_size, third);
        return 0;
    }
    if (!strcmp(m, "tmpfs")) {  // the in-memory /tmp: files, directories, renames, removals
        FILE *f = fopen("/tmp/a", "w");
        if (!f) { printf("fopen: %s\n", name(errno)); return 1; }
        fputs("hello tmpfs\n", f);
        fclose(f);
        char line[64] = "";
        f = fopen("/tmp/a", "r");
        fgets(line, sizeof line, f);
        fclose(f);
        int made = mkdir("/tmp/d", 0755), moved = rename("/tmp/a", "/tmp/d/b");
        struct stat st;
        int stated = stat("/tmp/d/b", &st);
        char listing[256] = "";
        const char *dirs[] = {"/tmp", "/tmp/d", "/"};
        for (int i = 0; i < 3; i++) {
            DIR *dir = opendir(dirs[i]);
            strcat(listing, dirs[i]);
            strcat(listing, ":");
            char *names[16];
            int n = 0;
            for (struct dirent *e; dir && (e = readdir(dir)) && n < 16;) if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
            if (dir) closedir(dir);
            qsort(names, n, sizeof *names, compare);
            for (int k = 0; k < n; k++) { strcat(listing, " "); strcat(listing, names[k]); }
            strcat(listing, ";");
        }
        int notEmpty = rmdir("/tmp/d") == 0 ? 0 : errno;
        int removed = unlink("/tmp/d/b") + rmdir("/tmp/d");
        int gone = access("/tmp/d", F_OK) == 0 ? 0 : errno;
        printf("%s made=%d moved=%d size=%ld %s notempty=%s removed=%d gone=%s\n", line[0] ? "read" : "empty", made, moved,
               stated == 0 ? (long)st.st_size : -1L, listing, name(notEmpty), removed, name(gone));
        return 0;
    }
    if (!strcmp(m, "realloc")) {  // large blocks: glibc reallocs mmapped chunks with mremap
        char *p = malloc(1 << 20);
        memset(p, 'x', 1 << 20);
        p[(1 << 20) - 1] = 'y';
        for (int size = 2 << 20; size <= 8 << 20; size *= 2) p = realloc(p, (size_t)size);
        char *shrunk = realloc(p, 3 << 20);
        printf("realloc kept=%c%c%c\n", shrunk[0], shrunk[(1 << 20) - 2], shrunk[(1 << 20) - 1]);
        free(shrunk);
        return 0;
    }
    if (!strcmp(m, "read-reserved")) {  // a PROT_NONE page faults on any access
        volatile char *r = mmap(NULL, 1UL << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return r[4096];
    }
    if (!strcmp(m, "pipe")) {  /* a pipe between the program's own descriptors */
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0) { printf("pipe2: %s\n", name(errno)); return 1; }
        long w = write(fds[1], "hello", 5);
        char buffer[16] = "";
        long r = read(fds[0], buffer, sizeof buffer);
        fcntl(fds[0], F_SETFL, O_NONBLOCK);
        long empty = read(fds[0], buffer + 8, 4) < 0 ? errno : 0;
        close(fds[1]);
        long eof = read(fds[0], buffer + 8, 4);
        int again[2];
        pipe(again);
        close(again[0]);
        signal(SIGPIPE, SIG_IGN);  /* else SIGPIPE ends the process, as on Linux */
        long broken = write(again[1], "x", 1) < 0 ? errno : 0;
        struct stat st;
        fstat(fds[0], &st);
        printf("wrote=%ld read=%ld:%.5s empty=%s eof=%ld broken=%s fifo=%d\n", w, r, buffer, name((int)empty), eof,
               name((int)broken), S_ISFIFO(st.st_mode));
        return 0;
    }
    if (!strcmp(m, "pipe-block")) {  /* a read nobody will ever satisfy: only the deadline ends it */
        int fds[2];
        pipe(fds);
        char c;
        return (int)read(fds[0], &c, 1);
    }
    if (!strcmp(m, "jit")) {  /* write code into RW memory, flip it to RX, run it */
        unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        static const unsigned char answer[] = {0xb8, 42, 0, 0, 0, 0xc3};  /* mov $42, %eax; ret */
        memcpy(code, answer, sizeof answer);
        if (mprotect(code, 4096, PROT_READ | PROT_EXEC) != 0) { printf("mprotect: %s\n", name(errno)); return 1; }
        printf("jit=%d\n", ((int (*)(void))code)());
        return 0;
    }
    if (!strcmp(m, "write-readonly")) {  // a write to a page made read-only faults, as on Linux
        char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        p[0] = 1;
        mprotect(p, 4096, PROT_READ);
        p[0] = 2;
        return 0;
    }
    if (!strcmp(m, "emfile")) {  // the fd table is bounded
        int n = 0, fd;
        while ((fd = open("/dev/null", O_RDONLY)) >= 0) n++;
        printf("opened %d, then %s\n", n, name(errno));
        return 0;
    }
    if (!strcmp(m, "escape") && argc > 2) {  // nothing outside the grants exists
        const char *paths[] = {"../../../../etc/passwd", "/etc/passwd", "/proc/self/root/etc/passwd", "escape-link",
                               "/proc/self/cwd/fruit.txt", "/tmp/../etc/passwd", "fifo"};
        if (chdir(argv[2]) != 0) { printf("chdir: %s\n", strerror(errno)); return 1; }
        for (int i = 0; i < 7; i++) {
            int fd = open(paths[i], O_RDONLY);
            printf("%s: %s\n", paths[i], fd >= 0 ? "OPENED" : name(errno));
        }
        char buffer[16];
        int fd = open("fruit.txt", O_RDONLY);
        long huge = read(fd, buffer, huge_count);  // a count far past the buffer: EFAULT, nothing written past it
        printf("huge read: %s\n", huge >= 0 ? "ok" : name(errno));
        // As Linux: a read stops before the first page it may not write; none at all is EFAULT.
        char *pages = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mprotect(pages + 4096, 4096, PROT_NONE);
        long edge = pread(fd, pages + 4092, 16, 0);
        printf("edge read: %ld %.4s\n", edge, pages + 4092);
        printf("inaccessible read: %s\n", pread(fd, pages + 4096, 4, 0) >= 0 ? "ok" : name(errno));
        mprotect(pages, 4096, PROT_READ);
        printf("read-only read: %s\n", pread(fd, pages, 4, 0) >= 0 ? "ok" : name(errno));
        printf("write to ro: %s\n", open("new.txt", O_WRONLY | O_CREAT, 0644) >= 0 ? "OPENED" : name(errno));
        return 0;
    }
    printf("unknown mode %s\n", m);
    return 2;
}
