// Makes argv[1] no-op host calls (number KS_HOSTCALL_USER), for the host-call benchmark.
#include <kvmsandbox.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 0;
    for (long i = 0; i < n; i++) ks_hostcall(KS_HOSTCALL_USER, i, 0, 0, 0, 0, 0);
    return 0;
}
