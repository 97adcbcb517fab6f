/* Two threads, each waiting for the other: a deadlock the sandbox reports (ThreadsTests). */
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static void *waiter(void *arg) {
    pthread_mutex_lock(&lock);
    pthread_cond_wait(&never, &lock);  /* nobody signals */
    pthread_mutex_unlock(&lock);
    return 0;
}
int main(void) {
    pthread_t thread;
    pthread_create(&thread, 0, waiter, 0);
    puts("waiting");
    fflush(stdout);
    pthread_join(thread, 0);
    return 0;
}
