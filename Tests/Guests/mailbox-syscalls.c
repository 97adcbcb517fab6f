// A hostile guest against exitless system calls: it writes the mailbox page itself, posting
// system calls (bit 62) with garbage numbers, bad pointers and buffers it changes while the host
// may be serving them, posts and never waits, turns the polling word on, then makes ordinary
// calls, which must still work. Prints "ok" and exits 0 when they did.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAILBOX ((volatile uint64_t *)0x7ff000002000UL)
#define FLAG (1ULL << 62)

static void post(uint64_t number, uint64_t a0, uint64_t a1, uint64_t a2) {
    MAILBOX[1] = number;
    MAILBOX[2] = a0;
    MAILBOX[3] = a1;
    MAILBOX[4] = a2;
    MAILBOX[0] = MAILBOX[0] + 1;   // post, and do not wait
}

int main(void) {
    static char buffer[64] = "posted by hand\n";
    const uint64_t numbers[] = { FLAG | 1, FLAG | 0, FLAG | 60, FLAG | 231, FLAG | 0xffffffffULL, FLAG | (1ULL << 61),
                                 FLAG | 57, FLAG | 56, FLAG | 15, FLAG | 158, ~0ULL, 0xf02, 0x1000 };
    for (int round = 0; round < 2000; round++) {
        uint64_t number = numbers[round % (sizeof numbers / sizeof numbers[0])];
        post(number, round % 3 == 0 ? 1 : 0, round % 5 == 0 ? 8 : (uint64_t)buffer, sizeof buffer);
        for (int i = 0; i < 64; i++) buffer[i % sizeof buffer] ^= (char)i;   // change it while it may be served
        MAILBOX[16] = round & 1;                                            // the polling word, forged
        MAILBOX[8] = MAILBOX[0];                                            // a forged answer
        if (round % 7 == 0) getppid();                                      // ordinary calls in between
    }
    // Ordinary calls still give the right results.
    int ends[2];
    char back[4] = {0};
    int good = pipe(ends) == 0 && write(ends[1], "abc", 3) == 3 && read(ends[0], back, 4) == 3 && memcmp(back, "abc", 3) == 0;
    good = good && close(ends[0]) == 0 && close(ends[1]) == 0 && close(ends[1]) == -1;
    good = good && getpid() == 1 && write(1, "", 0) == 0;
    printf(good ? "ok\n" : "wrong results\n");
    return good ? 0 : 1;
}
