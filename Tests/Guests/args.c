// Prints argv and envp and the auxv entries libc saw; exits with argc.
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>

int main(int argc, char **argv, char **envp) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = envp; *e; e++) printf("env %s\n", *e);
    printf("HOME=%s\n", getenv("HOME") ? getenv("HOME") : "(unset)");
    printf("pagesz=%lu random=%s phdr=%s\n", getauxval(AT_PAGESZ), getauxval(AT_RANDOM) ? "yes" : "no",
           getauxval(AT_PHDR) ? "yes" : "no");
    return argc;
}
