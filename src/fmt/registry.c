/* vmfs — the list of format drivers and format probing.
 * A new format is one file in src/fmt/ and one line here. */
#include "config.h"

#include "vmfs/fmt.h"

extern const struct vfmt_driver vfmt_qcow2;
extern const struct vfmt_driver vfmt_vhd;
extern const struct vfmt_driver vfmt_vdi;
extern const struct vfmt_driver vfmt_qed;
extern const struct vfmt_driver vfmt_vmdk;
extern const struct vfmt_driver vfmt_vhdx;
extern const struct vfmt_driver vfmt_bridge;
extern const struct vfmt_driver vfmt_raw;

/* Probed in order; raw last, it claims files by extension only. */
const struct vfmt_driver *const vfmt_drivers[] = {
    &vfmt_qcow2,
    &vfmt_vhd,
    &vfmt_vdi,
    &vfmt_qed,
    &vfmt_vmdk,
    &vfmt_vhdx,
    &vfmt_bridge,
    &vfmt_raw,
    NULL,
};

const struct vfmt_driver *vfmt_by_name(const char *name)
{
    for (size_t i = 0; vfmt_drivers[i]; i++)
        if (!strcmp(vfmt_drivers[i]->name, name))
            return vfmt_drivers[i];
    return NULL;
}

const struct vfmt_driver *vfmt_probe(const uint8_t *head, size_t len,
                                     uint64_t file_size, const char *path,
                                     bool raw_fallback)
{
    const struct vfmt_driver *best = NULL;
    int best_score = 0;
    for (size_t i = 0; vfmt_drivers[i]; i++) {
        int s = vfmt_drivers[i]->probe(head, len, file_size, path);
        if (s > best_score) {
            best_score = s;
            best = vfmt_drivers[i];
        }
    }
    if (!best && raw_fallback)
        best = &vfmt_raw;
    return best;
}
