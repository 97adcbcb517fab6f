// The first guest: prints its arguments, allocates, and exits with a status.
#include <kvmsandbox.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    printf("hello from a KVM micro-VM: %d argument(s)\n", argc - 1);
    for (int i = 1; i < argc; i++) printf("  argv[%d] = %s\n", i, argv[i]);

    char *copy = malloc(64);
    if (!copy) return 1;
    snprintf(copy, 64, "%s says hi", argv[0]);
    fflush(stdout);  // printf is buffered; ks_write goes straight to the host
    ks_write(1, copy, strlen(copy));
    ks_write(1, "\n", 1);
    free(copy);
    return argc - 1;
}
