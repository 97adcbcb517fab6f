/* pthread_create past the sandbox's thread limit fails with EAGAIN (ThreadsTests). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *sleeper(void *arg) { for (;;) sleep(1000); return 0; }
int main(void) {
    int created = 0, error = 0;
    for (int i = 0; i < 100; i++) {
        pthread_t thread;
        error = pthread_create(&thread, 0, sleeper, 0);
        if (error) break;
        created++;
    }
    printf("created %d, then %s\n", created, error == EAGAIN ? "EAGAIN" : "something else");
    return 0;
}
