// The smallest unit of work, run as a fresh VM (vm_create_ns) and as a fresh process
// (process_spawn_ns): add two numbers that the compiler cannot fold, exit 0 if right.
static volatile long a = 1, b = 2;
int main(void) { return a + b == 3 ? 0 : 1; }
