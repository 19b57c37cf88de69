/* vmfs — loading a shared library on first use (see lazylib.h). */
#include "config.h"

#include <dlfcn.h>
#include <stdio.h>

#include "vmfs/lazylib.h"

static bool load(struct lazylib *l)
{
    void *h = dlopen(l->soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(l->err, sizeof l->err, "%s cannot be loaded (install the Debian package %s)",
                 l->soname, l->package);
        return false;
    }
    for (size_t i = 0; l->names[i]; i++) {
        void *sym = dlsym(h, l->names[i]);
        if (!sym) {
            snprintf(l->err, sizeof l->err, "%s has no function %s (too old?)", l->soname,
                     l->names[i]);
            dlclose(h);
            return false;
        }
        memcpy(&l->slots[i], &sym, sizeof sym);
    }
    return true;       /* the handle stays open for the life of the process */
}

bool lazylib_load(struct lazylib *l)
{
    pthread_mutex_lock(&l->lock);
    if (l->state == 0)
        l->state = load(l) ? 1 : -1;
    bool ok = l->state > 0;
    pthread_mutex_unlock(&l->lock);
    return ok;
}
