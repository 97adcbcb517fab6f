/*
 * The Wasmtime side of `kvmsandbox bench`: instantiate a small module and call one export,
 * through Wasmtime's C API (dlopen of libwasmtime.so, e.g. the one in `pip install wasmtime`),
 * with its fastest documented setup for per-request instances: the pooling allocator and a
 * pre-instantiated module (InstancePre), one fresh Store per request.
 *
 *   wasmtime_bench LIBWASMTIME.so ITERATIONS
 * prints: instantiate_call_ns=<median> instantiate_call_p99_ns=<p99> call_ns=<median>
 *
 * Only the handful of C API functions used are declared here; struct layouts are kept to the
 * parts this file touches (kind bytes, i64 payloads at offset 8), with room to spare.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { size_t size; char *data; } byte_vec;
typedef struct { uint64_t store_id; size_t index; } instance_t;
typedef struct { uint8_t kind; uint8_t pad[7]; uint64_t payload[7]; } extern_t;  /* kind + union (func: store_id, ptr) */
typedef struct { uint8_t kind; uint8_t pad[7]; int64_t i64; uint64_t rest[2]; } val_t;

#define LOAD(name) name##_t name = (name##_t)dlsym(lib, #name); if (!name) { fprintf(stderr, "missing %s\n", #name); return 2; }
typedef void *(*wasm_config_new_t)(void);
typedef void *(*wasm_engine_new_with_config_t)(void *);
typedef void *(*wasmtime_pooling_allocation_config_new_t)(void);
typedef void (*wasmtime_pooling_allocation_strategy_set_t)(void *, void *);
typedef void *(*wasmtime_wat2wasm_t)(const char *, size_t, byte_vec *);
typedef void *(*wasmtime_module_new_t)(void *, const char *, size_t, void **);
typedef void *(*wasmtime_linker_new_t)(void *);
typedef void *(*wasmtime_linker_instantiate_pre_t)(void *, void *, void **);
typedef void *(*wasmtime_store_new_t)(void *, void *, void *);
typedef void *(*wasmtime_store_context_t)(void *);
typedef void (*wasmtime_store_delete_t)(void *);
typedef void *(*wasmtime_instance_pre_instantiate_t)(void *, void *, instance_t *, void **);
typedef int (*wasmtime_instance_export_get_t)(void *, const instance_t *, const char *, size_t, extern_t *);
typedef void *(*wasmtime_func_call_t)(void *, const void *, const val_t *, size_t, val_t *, size_t, void **);

static double now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static int compare(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: wasmtime_bench LIB ITERATIONS\n"); return 2; }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    int n = atoi(argv[2]);
    LOAD(wasm_config_new) LOAD(wasm_engine_new_with_config) LOAD(wasmtime_pooling_allocation_config_new)
    LOAD(wasmtime_pooling_allocation_strategy_set) LOAD(wasmtime_wat2wasm) LOAD(wasmtime_module_new)
    LOAD(wasmtime_linker_new) LOAD(wasmtime_linker_instantiate_pre) LOAD(wasmtime_store_new)
    LOAD(wasmtime_store_context) LOAD(wasmtime_store_delete) LOAD(wasmtime_instance_pre_instantiate)
    LOAD(wasmtime_instance_export_get) LOAD(wasmtime_func_call)

    void *config = wasm_config_new();
    wasmtime_pooling_allocation_strategy_set(config, wasmtime_pooling_allocation_config_new());
    void *engine = wasm_engine_new_with_config(config);
    const char *wat = "(module (memory 1) (func (export \"add1\") (param i64) (result i64) local.get 0 i64.const 1 i64.add))";
    byte_vec wasm = {0, 0};
    if (wasmtime_wat2wasm(wat, strlen(wat), &wasm)) { fprintf(stderr, "wat2wasm failed\n"); return 1; }
    void *module = 0, *pre = 0;
    if (wasmtime_module_new(engine, wasm.data, wasm.size, &module)) { fprintf(stderr, "module_new failed\n"); return 1; }
    if (wasmtime_linker_instantiate_pre(wasmtime_linker_new(engine), module, &pre)) { fprintf(stderr, "instantiate_pre failed\n"); return 1; }

    double *samples = calloc(n, sizeof *samples);
    int64_t check = 0;
    for (int round = 0; round < 2; round++) {  /* round 0 warms up */
        for (int i = 0; i < n; i++) {
            double t0 = now_ns();
            void *store = wasmtime_store_new(engine, 0, 0);
            void *context = wasmtime_store_context(store);
            instance_t instance; void *trap = 0; extern_t item;
            if (wasmtime_instance_pre_instantiate(pre, context, &instance, &trap) || trap) { fprintf(stderr, "instantiate failed\n"); return 1; }
            if (!wasmtime_instance_export_get(context, &instance, "add1", 4, &item)) { fprintf(stderr, "no export\n"); return 1; }
            val_t arg = {0}, result = {0};
            arg.kind = 1; arg.i64 = i;  /* WASMTIME_I64 */
            if (wasmtime_func_call(context, &item.payload[0], &arg, 1, &result, 1, &trap) || trap) { fprintf(stderr, "call failed\n"); return 1; }
            check += result.i64 - i;
            wasmtime_store_delete(store);
            samples[i] = now_ns() - t0;
        }
    }
    qsort(samples, n, sizeof *samples, compare);
    double instantiate_call = samples[n / 2], p99 = samples[(int)(n * 0.99)];

    /* Calls on one warm instance. */
    void *store = wasmtime_store_new(engine, 0, 0);
    void *context = wasmtime_store_context(store);
    instance_t instance; void *trap = 0; extern_t item;
    wasmtime_instance_pre_instantiate(pre, context, &instance, &trap);
    wasmtime_instance_export_get(context, &instance, "add1", 4, &item);
    int calls = n * 100;
    double t0 = now_ns();
    for (int i = 0; i < calls; i++) {
        val_t arg = {0}, result = {0};
        arg.kind = 1; arg.i64 = i;
        wasmtime_func_call(context, &item.payload[0], &arg, 1, &result, 1, &trap);
        check += result.i64 - i;
    }
    double call = (now_ns() - t0) / calls;
    if (check != 2L * n + calls) { fprintf(stderr, "wrong results (%ld)\n", (long)check); return 1; }
    printf("instantiate_call_ns=%.0f instantiate_call_p99_ns=%.0f call_ns=%.1f\n", instantiate_call, p99, call);
    return 0;
}
