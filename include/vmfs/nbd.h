/* vmfs — the read-only NBD server: serves one view (a disk, a snapshot, a
 * partition or LV) on a private Unix socket, so that programs that want a
 * block device — the libguestfs appliance above all — read the decoded
 * bytes vmfs produces, whatever the image format.
 *
 * Newstyle fixed handshake, NBD_OPT_GO/INFO/EXPORT_NAME/ABORT/LIST,
 * structured replies optional, NBD_CMD_READ/DISC/FLUSH (writes refused with
 * EPERM), base:allocation block status from the view's holes.  Every
 * request is checked (offsets, lengths, sizes) before use.
 *
 * Threads: the server runs its own threads (one per connection); start and
 * stop from any thread. */
#ifndef VMFS_NBD_H
#define VMFS_NBD_H

#include "vmfs/tree.h"

struct nbd_server;

/* Serves v read-only on a new Unix socket at sockpath (which must not
 * exist).  The server holds its own reference on v->t.  Returns NULL and
 * sets *err (negative errno) on failure. */
struct nbd_server *nbd_serve(const struct vview *v, const char *sockpath, int *err);
/* Closes the socket, ends every connection, joins the threads. */
void nbd_server_stop(struct nbd_server *s);

#endif
