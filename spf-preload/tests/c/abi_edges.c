/* Every export of libspf.so at its edges: size 0, huge sizes, alignments
 * that are not powers of two, calloc overflow, realloc to 0 and from NULL,
 * malloc_usable_size >= the request, errno as POSIX and glibc say.
 * Run under LD_PRELOAD=libspf.so by spf-preload/tests/preload.rs; prints
 * "abi_edges: ok" and exits 0, or names the failed check and exits 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks;
#define CHECK(c)                                                              \
    do {                                                                      \
        checks++;                                                             \
        if (!(c)) {                                                           \
            fprintf(stderr, "abi_edges: FAILED %s:%d: %s (errno %d)\n",       \
                    __FILE__, __LINE__, #c, errno);                           \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static int aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* The block is ours to write in full: malloc_usable_size bytes. */
static void fill(void *p, int byte) { memset(p, byte, malloc_usable_size(p)); }

static const size_t sizes[] = {0, 1, 7, 16, 17, 100, 128, 129, 1000, 4096, 8192, 8193,
                               65536, 100000, 262144, 262145, 1 << 20, (4 << 20) + 3,
                               24 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

int main(void) {
    /* The preload is in place: malloc resolves into libspf.so. */
    Dl_info info;
    CHECK(dladdr((void *)&malloc, &info) && strstr(info.dli_fname, "libspf"));

    /* malloc: every size, 16-byte aligned, usable >= request, unique. */
    for (size_t i = 0; i < NSIZES; i++) {
        char *p = malloc(sizes[i]);
        CHECK(p && aligned(p, 16));
        CHECK(malloc_usable_size(p) >= sizes[i]);
        fill(p, 0x5a);
        char *q = malloc(sizes[i]);
        CHECK(q && q != p);
        free(q);
        free(p);
    }
    CHECK(malloc_usable_size(NULL) == 0);
    free(NULL);

    /* Huge requests: NULL and ENOMEM, never a crash. */
    size_t huge[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX, (size_t)1 << 62,
                     (size_t)1 << 46};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        errno = 0;
        CHECK(malloc(huge[i]) == NULL && errno == ENOMEM);
        errno = 0;
        CHECK(calloc(1, huge[i]) == NULL && errno == ENOMEM);
    }

    /* calloc: zeroed (also a block reused dirty), overflow -> ENOMEM. */
    for (size_t i = 0; i < NSIZES; i++) {
        char *d = malloc(sizes[i]);
        CHECK(d);
        fill(d, 0xff);
        free(d);
        unsigned char *z = calloc(1, sizes[i]);
        CHECK(z);
        size_t k = 0;
        while (k < sizes[i] && z[k] == 0) k++;
        CHECK(k == sizes[i]);
        free(z);
    }
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2 + 1, 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc((size_t)1 << 33, (size_t)1 << 33) == NULL && errno == ENOMEM);
    void *c0 = calloc(0, 8), *c1 = calloc(8, 0);
    CHECK(c0 && c1 && c0 != c1);
    free(c0);
    free(c1);

    /* realloc: from NULL, through every size class and back, contents
     * kept; to 0 frees and returns NULL (glibc); failure keeps the block. */
    char *r = realloc(NULL, 10);
    CHECK(r);
    memcpy(r, "0123456789", 10);
    size_t grow[] = {20, 200, 5000, 70000, 300000, 5 << 20, 64 << 20, 40000, 3000, 12};
    for (size_t i = 0; i < sizeof grow / sizeof grow[0]; i++) {
        r = realloc(r, grow[i]);
        CHECK(r && malloc_usable_size(r) >= grow[i] && aligned(r, 16));
        CHECK(memcmp(r, "0123456789", 10) == 0);
    }
    errno = 0;
    CHECK(realloc(r, SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(realloc(r, (size_t)1 << 46) == NULL && errno == ENOMEM);
    CHECK(memcmp(r, "0123456789", 10) == 0);
    CHECK(realloc(r, 0) == NULL);
    char *r0 = realloc(NULL, 0);
    CHECK(r0);
    free(r0);

    /* reallocarray: overflow -> ENOMEM and the block kept. */
    int *a = reallocarray(NULL, 100, sizeof(int));
    CHECK(a);
    for (int i = 0; i < 100; i++) a[i] = i;
    errno = 0;
    CHECK(reallocarray(a, SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);
    a = reallocarray(a, 100000, sizeof(int));
    CHECK(a && a[99] == 99 && malloc_usable_size(a) >= 400000);
    free(a);

    /* posix_memalign: EINVAL for 0, non-powers of two, non-multiples of
     * sizeof(void *); ENOMEM for huge; errno and *out untouched then. */
    void *sentinel = (void *)0x1234, *p = sentinel;
    size_t bad_align[] = {0, 1, 2, 4, 12, 24, 48, 100, 4097, 3 << 20};
    for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
        errno = 777;
        CHECK(posix_memalign(&p, bad_align[i], 64) == EINVAL && p == sentinel && errno == 777);
    }
    errno = 777;
    CHECK(posix_memalign(&p, 64, SIZE_MAX - 100) == ENOMEM && p == sentinel && errno == 777);
    for (size_t al = sizeof(void *); al <= (8 << 20); al <<= 1) {
        for (size_t i = 0; i < NSIZES; i++) {
            if (sizes[i] > (4 << 20) + 3 && al > 65536) continue; /* keep it quick */
            void *m = NULL;
            CHECK(posix_memalign(&m, al, sizes[i]) == 0 && m && aligned(m, al));
            CHECK(malloc_usable_size(m) >= sizes[i]);
            fill(m, 1);
            /* realloc of an over-aligned block keeps the contents. */
            m = realloc(m, sizes[i] + 1000);
            CHECK(m && ((unsigned char *)m)[0] == 1);
            free(m);
        }
    }

    /* aligned_alloc: powers of two only (C17), any size. */
    size_t not_pow2[] = {0, 3, 24, 48, 96, 1000, 65537};
    for (size_t i = 0; i < sizeof not_pow2 / sizeof not_pow2[0]; i++) {
        errno = 0;
        CHECK(aligned_alloc(not_pow2[i], 64) == NULL && errno == EINVAL);
    }
    for (size_t al = 1; al <= (1 << 20); al <<= 1) {
        void *m = aligned_alloc(al, 100); /* 100 is not a multiple: allowed */
        CHECK(m && aligned(m, al) && malloc_usable_size(m) >= 100);
        free(m);
    }
    errno = 0;
    CHECK(aligned_alloc(4096, SIZE_MAX) == NULL && errno == ENOMEM);

    /* memalign: a non-power of two rounds up (glibc); too large -> EINVAL. */
    size_t odd[] = {3, 24, 100, 3000, 65537, 3 << 20};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        size_t up = 1;
        while (up < odd[i]) up <<= 1;
        void *m = memalign(odd[i], 50);
        CHECK(m && aligned(m, up) && malloc_usable_size(m) >= 50);
        free(m);
    }
    errno = 0;
    CHECK(memalign(SIZE_MAX / 2 + 2, 16) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(SIZE_MAX / 2 + 1, 16) == NULL && errno == ENOMEM);

    /* valloc and pvalloc: page aligned; pvalloc rounds up to pages. */
    void *v = valloc(1);
    CHECK(v && aligned(v, 4096));
    free(v);
    v = valloc(0);
    CHECK(v && aligned(v, 4096));
    free(v);
    v = pvalloc(1);
    CHECK(v && aligned(v, 4096) && malloc_usable_size(v) >= 4096);
    free(v);
    v = pvalloc(5000);
    CHECK(v && malloc_usable_size(v) >= 8192);
    free(v);
    errno = 0;
    CHECK(pvalloc(SIZE_MAX - 10) == NULL && errno == ENOMEM);

    /* The glibc extras: mallinfo2 sees live bytes; malloc_trim releases;
     * mallopt is an honest no-op; malloc_stats prints spf's figures. */
    struct mallinfo2 before = mallinfo2();
    void *big = malloc(10 << 20);
    CHECK(big);
    struct mallinfo2 during = mallinfo2();
    CHECK(during.uordblks >= before.uordblks + (10 << 20));
    CHECK(during.hblks >= 1 && during.arena >= during.uordblks);
    free(big);
    CHECK(mallinfo2().uordblks < during.uordblks);
    CHECK(mallinfo2().keepcost >= (10 << 20)); /* the freed block is cached */
    CHECK(malloc_trim(0) == 1);
    CHECK(mallopt(M_ARENA_MAX, 1) == 0);
    struct mallinfo old = mallinfo();
    CHECK(old.uordblks >= 0 && old.arena >= 0);
    malloc_stats();

    printf("abi_edges: ok (%d checks)\n", checks);
    return 0;
}
