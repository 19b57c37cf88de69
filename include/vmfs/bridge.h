/* vmfs — the qemu-nbd bridge (src/fmt/bridge.c): formats vmfs does not
 * decode itself (dmg, parallels, bochs, cloop, qcow version 1) are read
 * through a private qemu-nbd process per open image.
 *
 * Those processes stop when their image closes, and when vmfs ends: they
 * are bound to vmfs (they get SIGTERM if it dies) and an atexit handler
 * stops the rest.  A daemon may also call vfmt_bridge_shutdown() itself
 * at shutdown, from any thread, once no reads are in flight; calling it
 * twice is harmless. */
#ifndef VMFS_BRIDGE_H
#define VMFS_BRIDGE_H

#include "vmfs/fmt.h"

extern const struct vfmt_driver vfmt_bridge;

/* Stops every qemu-nbd the bridge started (SIGTERM, then SIGKILL after
 * 2 s) and reaps them.  Images opened afterwards still read (a read starts
 * their qemu-nbd again); images already open read EIO from then on. */
void vfmt_bridge_shutdown(void);

#endif
