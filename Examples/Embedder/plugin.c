// The untrusted plugin of the embedder example (Sources/EmbedderExample/main.swift):
//   kvmsandbox cc -O2 -o plugin.elf Examples/Embedder/plugin.c
#include <kvmsandbox.h>
#include <string.h>

static long calls;  /* 0 in the snapshot: every request starts from there */

/* Asks the host to greet `name`: the typed host function (name: String, call: Int) -> Int. */
long greet(const char *name) { calls++; return ks_hostcall(KS_HOSTCALL_USER, (long)name, (long)strlen(name), calls, 0, 0, 0); }

/* Plugins misbehave: a null-pointer write, an endless loop. */
struct entry { struct entry *next; long value; };
static long total(const struct entry *list) { long sum = 0; for (; list; list = list->next) sum += list->value; return sum; }
long crash(void) { return total((const struct entry *)8); }
long spin(void) { for (;;) __asm__ volatile(""); }

int main(void) {
    ks_ready();  /* the host snapshots here */
    return 0;
}
