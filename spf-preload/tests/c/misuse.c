/* Pointers libspf.so never handed out, given to free, realloc or
 * malloc_usable_size: each must end the process with spf's message naming
 * the pointer (never silent corruption). Usage: misuse CASE; prints the
 * pointer it passes ("pointer 0x...") on stdout before passing it. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* glibc's own allocator, behind the interposed malloc. */
extern void *__libc_malloc(size_t);

static void *announce(void *p) {
    printf("pointer %p\n", p);
    fflush(stdout);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *c = argv[1];
    char on_stack[64];
    if (!strcmp(c, "stack")) {
        free(announce(on_stack));
    } else if (!strcmp(c, "interior")) {
        char *p = malloc(100);
        free(announce(p + 16));
    } else if (!strcmp(c, "interior-large")) {
        char *p = malloc(1 << 20);
        free(announce(p + 4096));
    } else if (!strcmp(c, "glibc")) {
        free(announce(__libc_malloc(100)));
    } else if (!strcmp(c, "realloc-glibc")) {
        void *p = realloc(announce(__libc_malloc(100)), 200);
        printf("realloc returned %p\n", p);
    } else if (!strcmp(c, "usable-stack")) {
        printf("usable %zu\n", malloc_usable_size(announce(on_stack)));
    } else if (!strcmp(c, "double-free-large")) {
        void *p = malloc(2 << 20);
        free(p);
        free(announce(p));
    } else {
        return 2;
    }
    puts("misuse: not caught");
    return 0;
}
