/* vmfs — shared libraries loaded on first use.
 *
 * libnbd and libguestfs bring dozens of libraries with them (libvirt,
 * gnutls, glib, …): linked normally they cost every mount ~15 MiB of
 * memory and tens of milliseconds before the first read, although most
 * mounts never use them.  Their users resolve the functions they call
 * through a lazylib instead, the first time they need one.
 *
 * Usage: list the functions once with an X-macro, declare the table with
 * LAZYLIB_TABLE, point calls at it with #define, and call lazylib_load()
 * before the first call.
 *
 * Threads: lazylib_load may be called from any thread, any number of times. */
#ifndef VMFS_LAZYLIB_H
#define VMFS_LAZYLIB_H

#include <pthread.h>

#include "vmfs/common.h"

struct lazylib {
    const char *soname;            /* e.g. "libnbd.so.0" */
    const char *package;           /* the Debian package that has it */
    const char *const *names;      /* the functions, NULL-terminated */
    void **slots;                  /* their addresses go here, same order */
    pthread_mutex_t lock;
    int state;                     /* 0 not tried, 1 loaded, -1 failed */
    char err[256];                 /* why it failed */
};

#define LAZYLIB_SLOT(f) __typeof__(f) *f;
#define LAZYLIB_NAME(f) #f,

/* Loads the library and every function; true on success, else l->err
 * says why (the same answer every later call). */
bool lazylib_load(struct lazylib *l);

#endif
