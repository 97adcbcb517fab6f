/* A second thread crashes while the main one waits in pthread_join: the report names the
   faulting thread and shows the other one's stack (ThreadsTests). */
#include <pthread.h>
#include <stdio.h>
__attribute__((noinline)) static void crash(volatile int *p) { *p = 42; }
static void *worker(void *arg) { crash((volatile int *)arg); return 0; }
int main(void) {
    pthread_t thread;
    pthread_create(&thread, 0, worker, 0);
    pthread_join(thread, 0);
    puts("not reached");
    return 0;
}
