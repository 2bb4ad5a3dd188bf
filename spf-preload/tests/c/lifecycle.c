/* libspf.so through a process's life: C threads with cross-thread frees,
 * fork while threads allocate, a daemon's double fork, fork + exec,
 * posix_spawn, dlopen of a plugin with thread-local storage, and a program
 * that installs its own SIGSEGV and SIGBUS handlers after spf did.
 * Usage: lifecycle PLUGIN.so — prints one line per step and "lifecycle: ok". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "lifecycle: FAILED %s:%d: %s (errno %d)\n",       \
                    __FILE__, __LINE__, #c, errno);                           \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static unsigned next_rand(unsigned *s) { *s = *s * 1103515245u + 12345u; return *s >> 8; }

/* A block carries its size and a pattern, checked before it is freed. */
static void *block(unsigned *seed) {
    unsigned r = next_rand(seed);
    size_t n = r % 8 == 0 ? 300000 + r % 200000 : 16 + r % 3000;
    unsigned char *p = malloc(n);
    CHECK(p);
    memcpy(p, &n, sizeof n);
    memset(p + sizeof n, (int)(n & 0xff), n - sizeof n);
    return p;
}
static void unblock(void *v) {
    unsigned char *p = v;
    size_t n;
    memcpy(&n, p, sizeof n);
    CHECK(malloc_usable_size(p) >= n);
    CHECK(p[n - 1] == (unsigned char)(n & 0xff));
    free(p);
}

/* Threads: each allocates a batch, frees half, hands the rest to the next
 * thread (cross-thread frees), many rounds. */
#define THREADS 6
#define SLOTS 512
static void *slots[THREADS][SLOTS];
static pthread_barrier_t barrier;

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    unsigned seed = 1234u + id;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < SLOTS; i++) slots[id][i] = block(&seed);
        for (int i = 0; i < SLOTS; i += 2) unblock(slots[id][i]);
        pthread_barrier_wait(&barrier);
        int from = (id + 1) % THREADS;
        for (int i = 1; i < SLOTS; i += 2) unblock(slots[from][i]);
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

static void threads(void) {
    pthread_t t[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    /* Short-lived threads: heaps abandoned and reused. */
    for (int i = 0; i < 200; i++) {
        CHECK(pthread_create(&t[0], NULL, (void *(*)(void *))strdup, "short-lived") == 0);
        void *s;
        CHECK(pthread_join(t[0], &s) == 0 && strcmp(s, "short-lived") == 0);
        free(s); /* allocated by a thread that has exited */
    }
    puts("threads: ok");
}

/* fork while other threads allocate; the child allocates, spawns a thread
 * and exits through exit() (atexit handlers run). */
static volatile int stop_spinning;
static void *spinner(void *arg) {
    unsigned seed = (unsigned)(intptr_t)arg;
    while (!stop_spinning) unblock(block(&seed));
    return NULL;
}

static void fork_under_load(void) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, spinner, (void *)(intptr_t)(77 + i)) == 0);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            unsigned seed = 5 + i;
            void *keep[64];
            for (int k = 0; k < 64; k++) keep[k] = block(&seed);
            pthread_t c;
            CHECK(pthread_create(&c, NULL, (void *(*)(void *))strdup, "child thread") == 0);
            void *s;
            CHECK(pthread_join(c, &s) == 0);
            free(s);
            for (int k = 0; k < 64; k++) unblock(keep[k]);
            exit(0);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    stop_spinning = 1;
    for (int i = 0; i < 2; i++) CHECK(pthread_join(t[i], NULL) == 0);
    puts("fork: ok");
}

/* A daemon: fork, setsid, fork again; the grandchild allocates and reports
 * over a pipe. */
static void daemonize(void) {
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        CHECK(setsid() >= 0);
        pid_t g = fork();
        if (g != 0) _exit(g > 0 ? 0 : 1);
        unsigned seed = 99;
        size_t total = 0;
        for (int i = 0; i < 1000; i++) {
            void *p = block(&seed);
            total += malloc_usable_size(p);
            unblock(p);
        }
        char msg[64];
        int n = snprintf(msg, sizeof msg, "daemon %zu", total > 0 ? (size_t)1 : (size_t)0);
        CHECK(write(fds[1], msg, n) == n);
        _exit(0);
    }
    close(fds[1]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char buf[64] = {0};
    CHECK(read(fds[0], buf, sizeof buf - 1) > 0 && strcmp(buf, "daemon 1") == 0);
    close(fds[0]);
    puts("daemon: ok");
}

/* fork + exec and posix_spawn of a program that allocates (sh), which
 * inherits LD_PRELOAD. */
static void exec_and_spawn(void) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", "x=$(printf '%0500d' 0); test ${#x} = 500", (char *)NULL);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char *argv[] = {"sh", "-c", "exit 7", NULL};
    CHECK(posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) == 0);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 7);
    puts("exec and posix_spawn: ok");
}

/* dlopen: a plugin with a thread-local buffer that allocates, called from
 * threads; its memory is freed here and vice versa; then dlclose. */
typedef char *(*plugin_fn)(const char *);
static plugin_fn plugin_dup;
static void *plugin_thread(void *arg) {
    char *s = plugin_dup(arg);
    return s;
}
static void dlopen_plugin(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CHECK(h);
    plugin_dup = (plugin_fn)dlsym(h, "plugin_dup");
    void (*plugin_free)(void *) = (void (*)(void *))dlsym(h, "plugin_free");
    CHECK(plugin_dup && plugin_free);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, plugin_thread, "from a plugin") == 0);
    for (int i = 0; i < 4; i++) {
        void *s;
        CHECK(pthread_join(t[i], &s) == 0 && strcmp(s, "from a plugin #1") == 0);
        free(s);
    }
    plugin_free(strdup("freed by the plugin"));
    CHECK(dlclose(h) == 0);
    void *m = dlopen("libm.so.6", RTLD_NOW);
    CHECK(m && dlsym(m, "cos"));
    dlclose(m);
    puts("dlopen: ok");
}

/* The program's own SIGSEGV/SIGBUS handlers, installed after spf's: spf's
 * lazy large blocks (SPF_COMMIT=touch) still commit on touch, and the
 * program's handler still gets its own faults. */
static sigjmp_buf jump;
static volatile sig_atomic_t own_faults;
static void own_handler(int sig) {
    (void)sig;
    own_faults++;
    siglongjmp(jump, 1);
}

/* Large blocks committed on touch when SPF_COMMIT=touch: the fault handler
 * commits them, whoever installed a handler since. */
static void touch_large_blocks(void) {
    for (int round = 0; round < 3; round++) {
        size_t n = (size_t)(8 + round) << 20;
        unsigned char *p = malloc(n);
        CHECK(p);
        for (size_t i = 0; i < n; i += 4096) p[i] = (unsigned char)(i >> 12);
        for (size_t i = 0; i < n; i += 4096) CHECK(p[i] == (unsigned char)(i >> 12));
        free(p);
    }
}

/* A fault of the program's own, which its handler leaves by siglongjmp. */
static void own_fault(volatile char *guard) {
    if (sigsetjmp(jump, 1) == 0) {
        guard[0] = 1;
        CHECK(!"the write to a PROT_NONE page did not fault");
    }
}

static void own_signal_handlers(void) {
    free(malloc(1)); /* spf is up, its handler installed */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = own_handler;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0 && sigaction(SIGBUS, &sa, NULL) == 0);
    volatile char *guard = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(guard != MAP_FAILED);
    for (int i = 1; i <= 3; i++) {
        touch_large_blocks(); /* spf may put its handler back in front */
        own_fault(guard);     /* and then chains the program's fault on */
        CHECK(own_faults == i);
    }
    munmap((void *)guard, 4096);
    puts("own signal handlers: ok");
}

/* Blocks allocated before main: by a constructor, and by glibc's own
 * start-up (stdio's buffer is allocated at the first output). */
static char *before_main;
__attribute__((constructor(101))) static void early(void) { before_main = strdup("before main"); }

int main(int argc, char **argv) {
    CHECK(argc == 2);
    setvbuf(stdout, NULL, _IONBF, 0);
    Dl_info info;
    CHECK(dladdr((void *)&malloc, &info) && strstr(info.dli_fname, "libspf"));
    CHECK(before_main && malloc_usable_size(before_main) >= 12);
    free(before_main);
    threads();
    fork_under_load();
    daemonize();
    exec_and_spawn();
    dlopen_plugin(argv[1]);
    own_signal_handlers();
    puts("lifecycle: ok");
    return 0;
}
