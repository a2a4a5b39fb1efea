#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
static char buf[64];
char *getenv(const char *name) {
    static char *(*real)(const char *) = 0;
    if (name && strcmp(name, "SIMSOCK_MALLOC_INUSE") == 0) {
        struct mallinfo2 mi = mallinfo2();
        snprintf(buf, sizeof buf, "%zu", mi.uordblks + mi.hblkhd);
        return buf;
    }
    if (!real) real = (char *(*)(const char *))dlsym(RTLD_NEXT, "getenv");
    return real(name);
}
