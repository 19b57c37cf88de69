/* vmfs — damage a driver finds while mapping, reported once per place.
 *
 * map runs on many threads and meets the same damaged entry on every read
 * of it; a driver keys each damaged place (a block, an entry) and reports
 * it only the first time.  After VDAMAGE_MAX places one more problem says
 * that further ones are not listed.
 *
 * Threads: vdamage_first may be called from any thread; init and destroy
 * run alone (at open and close). */
#ifndef VMFS_FMT_DAMAGE_H
#define VMFS_FMT_DAMAGE_H

#include <pthread.h>

#include "vmfs/fmt.h"

#define VDAMAGE_MAX 16u

struct vdamage {
    pthread_mutex_t lock;
    uint64_t keys[VDAMAGE_MAX];
    size_t n;
    bool full;
};

void vdamage_init(struct vdamage *d);
void vdamage_destroy(struct vdamage *d);

/* True the first time key is seen: the caller then reports the damage
 * with vlayer_problem(l, …). */
bool vdamage_first(struct vdamage *d, struct vlayer *l, uint64_t key);

#endif
