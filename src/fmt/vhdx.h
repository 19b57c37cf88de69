/* vmfs — VHDX internals that the unit tests call directly: the CRC-32C,
 * GUID and UTF-16 helpers and the in-memory log replay (src/fmt/vhdx.c).
 * Everything here is pure: no I/O, no global state, safe on any thread. */
#ifndef VMFS_FMT_VHDX_H
#define VMFS_FMT_VHDX_H

#include "vmfs/common.h"

#define VHDX_LOG_SECTOR 4096u

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of buf, continuing
 * crc: start with 0; vhdx_crc32c(vhdx_crc32c(0, a), b) is the CRC of a||b. */
uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len);

/* The CRC-32C of a structure of len bytes whose own 4-byte checksum field at
 * csum_off counts as zero, as every VHDX checksum is defined. */
uint32_t vhdx_struct_crc(const uint8_t *buf, size_t len, size_t csum_off);

/* A GUID in its on-disk (mixed-endian) layout as "{XXXXXXXX-XXXX-XXXX-
 * XXXX-XXXXXXXXXXXX}"; out holds 39 bytes. */
void vhdx_guid_format(const uint8_t g[16], char out[39]);
/* Parses that form (braces optional, any case) into the on-disk layout. */
bool vhdx_guid_parse(const char *s, uint8_t g[16]);

/* n bytes of UTF-16LE (cut at the first NUL) as a malloc'ed UTF-8 string;
 * unpaired surrogates become U+FFFD. */
char *vhdx_utf16_to_utf8(const uint8_t *p, size_t n);

/* The log replayed in memory: what the file holds once the active sequence
 * is applied, as sorted, disjoint extents over file offsets. */
struct vhdx_ext {
    uint64_t off, len;       /* 4 KiB aligned */
    const uint8_t *data;     /* len bytes, or NULL: zeros */
};

struct vhdx_overlay {
    struct vhdx_ext *ext;
    size_t n;
    uint8_t *arena;          /* backing store of the data extents */
    uint64_t end;            /* the file is at least this long after replay */
};

struct vhdx_log_result {
    unsigned entries;            /* entries of the active sequence, replayed */
    uint64_t first_seq, last_seq;
    uint64_t flushed_file_offset;   /* of the last (head) entry */
    uint64_t last_file_offset;
    size_t descriptors;          /* data and zero descriptors applied */
    char damage[256];            /* why the log stops short, or "" */
};

/* Finds the active sequence of a log of len bytes (a multiple of 4 KiB)
 * written under log GUID guid, checks every entry (signatures, sequence
 * numbers, CRC-32C) and turns its descriptors into *ovl, later entries
 * over earlier ones.  Writes past max_file_off make an entry invalid.
 * Never fails: with no valid sequence res->entries is 0 and ovl is empty;
 * res->damage says why, when an entry that belongs to this log is
 * damaged.  The caller frees ovl with vhdx_overlay_free. */
void vhdx_log_replay(const uint8_t *log, uint64_t len, const uint8_t guid[16],
                     uint64_t max_file_off, struct vhdx_overlay *ovl,
                     struct vhdx_log_result *res);
void vhdx_overlay_free(struct vhdx_overlay *ovl);

/* True when some extent of ovl meets [off, off + len). */
bool vhdx_overlay_touches(const struct vhdx_overlay *ovl, uint64_t off, uint64_t len);
/* Replaces the bytes of buf, which holds file bytes [off, off + len), by
 * what the overlay says is there. */
void vhdx_overlay_apply(const struct vhdx_overlay *ovl, uint8_t *buf, size_t len, uint64_t off);

#endif
