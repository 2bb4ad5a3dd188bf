/* One of tls_modules.c's modules: thread-local storage and an allocation. */
#include <stdlib.h>
#include <string.h>

static __thread char block[128];

char *tls_get(int i) {
    char *p = malloc(32);
    memset(block, i, sizeof block);
    free(p);
    return block;
}
