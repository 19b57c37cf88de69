/* vmfs — damage reported once per place (damage.h). */
#include "config.h"

#include "fmt/damage.h"

void vdamage_init(struct vdamage *d)
{
    memset(d, 0, sizeof(*d));
    pthread_mutex_init(&d->lock, NULL);
}

void vdamage_destroy(struct vdamage *d)
{
    pthread_mutex_destroy(&d->lock);
}

bool vdamage_first(struct vdamage *d, struct vlayer *l, uint64_t key)
{
    bool first = true, overflow = false;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->n && first; i++)
        if (d->keys[i] == key)
            first = false;
    if (first && d->n < VDAMAGE_MAX) {
        d->keys[d->n++] = key;
    } else if (first) {
        first = false;
        overflow = !d->full;
        d->full = true;
    }
    pthread_mutex_unlock(&d->lock);
    if (overflow)
        vlayer_problem(l, "more damage found; further problems are not listed");
    return first;
}
