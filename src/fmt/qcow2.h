/* vmfs — qcow2 internals shared by the driver (qcow2.c) and its unit tests.
 *
 * The functions here are pure: they look at bytes handed to them and never
 * touch a file, a layer or the cache, so tests can feed them crafted input.
 * docs/formats/qcow2.md describes the on-disk layout they decode. */
#ifndef VMFS_FMT_QCOW2_H
#define VMFS_FMT_QCOW2_H

#include "vmfs/common.h"

#define QCOW2_MAGIC 0x514649fbu           /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN 72u
#define QCOW2_V3_HEADER_LEN 104u
#define QCOW2_MIN_CLUSTER_BITS 9u         /* 512 B */
#define QCOW2_MAX_CLUSTER_BITS 21u        /* 2 MiB */
#define QCOW2_MAX_L1_BYTES (32u << 20)    /* an L1 table holds at most 4 Mi entries */
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_BACKING_FMT 15u
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024u
#define QCOW2_MAX_SNAPSHOT_TABLE (64u << 20)
#define QCOW2_SUBCLUSTERS 32u

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

/* Header extension types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURES 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* L1 and L2 entries. */
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)

#define QCOW2_COMPRESSION_ZLIB 0u
#define QCOW2_COMPRESSION_ZSTD 1u

/* One entry of the feature name table extension. */
struct qcow2_feature {
    uint8_t type;     /* 0 incompatible, 1 compatible, 2 autoclear */
    uint8_t bit;
    char name[47];    /* NUL-terminated */
};

/* The header with its extensions, checked. */
struct qcow2_header {
    uint32_t version;
    uint64_t backing_off;
    uint32_t backing_len;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_off;
    uint64_t refcount_off;
    uint32_t refcount_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_off;
    uint64_t incompat, compat, autoclear;  /* zero for version 2 */
    uint32_t refcount_order;               /* 4 for version 2 */
    uint32_t header_len;                   /* 72 for version 2 */
    uint8_t compression;                   /* QCOW2_COMPRESSION_* */

    /* From the header extensions and the backing name area (malloc'ed,
     * NULL when absent). */
    char *backing_name;
    char *backing_fmt;
    /* Why the backing reference is unusable (malloc'ed), or NULL.  Not a
     * reason to refuse the image: reads that need the backing file fail. */
    char *backing_problem;
    char *data_file;
    bool has_bitmaps_ext;
    bool has_crypto_ext;
    unsigned unknown_exts;
    struct qcow2_feature *features;
    size_t nfeatures;
};

/* Parses the header in buf, which holds the first len bytes of the first
 * cluster (bytes of the cluster past len, or past the end of the file, read
 * as zeros).  file_size is the size of the whole file.  The L1 table and
 * snapshot fields are returned unchecked: the driver judges them, since
 * damage there leaves part of the image readable.
 *
 * On success returns 0 with *h filled (free with qcow2_header_free).
 * Returns -EINVAL for a malformed header and -ENOTSUP for a well-formed one
 * that vmfs cannot read (unknown incompatible features, encryption); then
 * msg holds one line saying why and *h holds nothing to free. */
int qcow2_parse_header(const uint8_t *buf, size_t len, uint64_t file_size,
                       struct qcow2_header *h, char *msg, size_t msglen);
void qcow2_header_free(struct qcow2_header *h);

/* The name of feature bit (type, bit): from the image's feature name table
 * when it has one, else vmfs's own name, else NULL. */
const char *qcow2_feature_name(const struct qcow2_header *h, unsigned type,
                               unsigned bit);

/* L1 entries needed to cover size bytes, or UINT64_MAX on overflow. */
uint64_t qcow2_l1_entries_for(uint64_t size, unsigned cluster_bits, bool ext_l2);

/* What one (sub)cluster is, from its L2 entry. */
enum qcow2_ctype {
    QCOW2_UNALLOC,     /* not here: backing file or zeros */
    QCOW2_ZERO,        /* reads as zeros */
    QCOW2_DATA,        /* at *host + offset in cluster */
    QCOW2_COMPRESSED,  /* compressed descriptor (qcow2_compressed) */
    QCOW2_INVALID,     /* damaged entry: *why says how */
};

struct qcow2_geom {
    unsigned cluster_bits;
    bool v3;          /* the zero flag exists */
    bool ext_l2;      /* bitmap holds subcluster state */
    bool data_file;   /* host offsets equal guest offsets, 0 may be valid */
};

/* Classifies subcluster sc (0 without extended L2 entries) of the guest
 * cluster starting at guest, given its L2 entry and (extended L2 only) its
 * bitmap.  An invalid entry is invalid for every subcluster of the cluster.
 * *host is the host cluster offset for DATA and allocated ZERO clusters. */
enum qcow2_ctype qcow2_classify(const struct qcow2_geom *g, uint64_t guest,
                                uint64_t entry, uint64_t bitmap, unsigned sc,
                                uint64_t *host, const char **why);

/* Decodes a compressed cluster descriptor: the host byte offset of the
 * compressed data and its length in bytes as the descriptor gives it (which
 * includes padding up to the end of the last 512-byte sector). */
void qcow2_compressed(unsigned cluster_bits, uint64_t entry, uint64_t *coff,
                      uint64_t *clen);

#endif
