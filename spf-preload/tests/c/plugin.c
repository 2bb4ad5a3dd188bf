/* A dlopen()ed plugin for lifecycle.c: thread-local storage (a module
 * loaded after start-up gets a dynamic TLS block, which glibc allocates
 * with malloc) and allocations made on the plugin's side. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static __thread int calls;
static __thread char scratch[256];

char *plugin_dup(const char *s) {
    calls++;
    snprintf(scratch, sizeof scratch, "%s #%d", s, calls);
    return strdup(scratch);
}

void plugin_free(void *p) { free(p); }
