// A static-PIE guest: needs relocation; pointers in data must point into the loaded image.
#include <stdio.h>
static const char *messages[] = {"relocated", "pointers", "work"};
int main(void) {
    for (int i = 0; i < 3; i++) printf("%s%s", messages[i], i < 2 ? " " : "\n");
    return 0;
}
