// argv[2] rounds of open + read 4 KiB + close of the file argv[1]: the same binary runs natively
// and in the sandbox (a static musl program, no SDK calls), for `kvmsandbox bench`.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 100;
    long rounds = atol(argv[2]);
    static char buffer[4096];
    for (long i = 0; i < rounds; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) return 1;
        if (read(fd, buffer, sizeof buffer) <= 0) return 2;
        close(fd);
    }
    return 0;
}
