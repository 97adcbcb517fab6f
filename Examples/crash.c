// A guest that crashes, to show a fault report:
//   kvmsandbox cc -g -o crash.elf Examples/crash.c
//   kvmsandbox run crash.elf        # exit status 139; the report names crash.c:11
#include <stdio.h>

struct node { struct node *next; int value; };

static int total(const struct node *list) {
    int sum = 0;
    for (const struct node *n = list; ; n = n->next)
        if (n->value < 0) break;
        else sum += n->value;         /* walks past the end: n becomes NULL */
    return sum;
}

int main(void) {
    struct node c = {0, 3}, b = {&c, 2}, a = {&b, 1};
    printf("sum: %d\n", total(&a));
    return 0;
}
