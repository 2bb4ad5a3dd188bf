/* dlopen of many modules with thread-local storage while a thread that
 * predates them runs: that thread's DTV (glibc's table of TLS blocks) must
 * grow, and glibc grows it with malloc from inside __tls_get_addr — which
 * may be libspf.so's malloc, reached from spf's own thread-local access
 * (Rust uses the general-dynamic TLS model in shared libraries). Usage:
 * tls_modules DIR N, where DIR holds libtls1.so … libtlsN.so built from
 * tls_module.c. Prints "tls_modules: ok". */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_barrier_t barrier;
static const char *dir;
static int n;

static void *handles[64];

/* dlopen each module (glibc allocates for each: when the main thread's DTV
 * runs out of room, the malloc that grows it is spf's, called from spf's
 * own thread-local access). */
static int load_all(void) {
    char name[4096];
    for (int i = 1; i <= n; i++) {
        snprintf(name, sizeof name, "%s/libtls%d.so", dir, i);
        if (!(handles[i] = dlopen(name, RTLD_NOW)))
            return fprintf(stderr, "%s\n", dlerror()), 0;
    }
    return 1;
}

/* Each module's thread-local block, and allocations beside. */
static int touch_all(void) {
    for (int i = 1; i <= n; i++) {
        char *(*get)(int) = (char *(*)(int))dlsym(handles[i], "tls_get");
        char *p = get(i), *q = malloc(100 + i);
        if (!p || p[0] != (char)i || !q) return 0;
        free(q);
    }
    return 1;
}

static void *early(void *arg) {
    (void)arg;
    free(malloc(10)); /* a heap and a DTV before the modules exist */
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier); /* the main thread has loaded them */
    free(malloc(10)); /* spf's thread-local access first: the DTV is stale */
    return (void *)(long)touch_all();
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    dir = argv[1];
    n = atoi(argv[2]);
    pthread_t t;
    pthread_barrier_init(&barrier, NULL, 2);
    if (pthread_create(&t, NULL, early, NULL)) return 1;
    pthread_barrier_wait(&barrier);
    if (n > 63 || !load_all() || !touch_all()) return 1;
    pthread_barrier_wait(&barrier);
    void *ok;
    pthread_join(t, &ok);
    if (!ok) return 1;
    puts("tls_modules: ok");
    return 0;
}
