// Reads standard input and writes it back: the smallest program with a ready point (its first
// read of stdin), for snapshot-file tests and fuzz seeds.
#include <unistd.h>

int main(void) {
    char buffer[4096];
    ssize_t n;
    while ((n = read(0, buffer, sizeof buffer)) > 0) write(1, buffer, n);
    return 0;
}
