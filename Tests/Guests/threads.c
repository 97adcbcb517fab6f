/* pthreads on the sandbox's one vCPU: 16 threads with a mutex, a condition variable, a barrier and
   joins, then a thread spinning on an atomic flag another sets (needs preemption). ThreadsTests. */
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <unistd.h>
#define N 16
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t barrier;
static long total; static int ready;
static atomic_int flag;
static void *worker(void *arg) {
    long id = (long)arg;
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < 1000; i++) { pthread_mutex_lock(&lock); total += id; pthread_mutex_unlock(&lock); }
    pthread_mutex_lock(&lock); ready++; pthread_cond_signal(&cond); pthread_mutex_unlock(&lock);
    return (void *)(id * 2);
}
static void *spinner(void *arg) { while (!atomic_load(&flag)) {} return (void *)7; }
static void *setter(void *arg) { usleep(20000); atomic_store(&flag, 1); return 0; }
int main(void) {
    pthread_t threads[N];
    pthread_barrier_init(&barrier, 0, N);
    for (long i = 0; i < N; i++) pthread_create(&threads[i], 0, worker, (void *)i);
    pthread_mutex_lock(&lock); while (ready < N) pthread_cond_wait(&cond, &lock); pthread_mutex_unlock(&lock);
    long sum = 0;
    for (int i = 0; i < N; i++) { void *r; pthread_join(threads[i], &r); sum += (long)r; }
    printf("total=%ld joined=%ld\n", total, sum);
    pthread_t s, t; void *r;
    pthread_create(&s, 0, spinner, 0); pthread_create(&t, 0, setter, 0);
    pthread_join(s, &r); pthread_join(t, 0);
    printf("spinner=%ld\n", (long)r);
    return 0;
}
