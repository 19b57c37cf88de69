/* vmfs — VMDK internals shared by the driver (vmdk.c), the descriptor
 * parser (vmdk_desc.c) and the unit tests.  docs/formats/vmdk.md describes
 * the layout. */
#ifndef VMFS_FMT_VMDK_H
#define VMFS_FMT_VMDK_H

#include "vmfs/common.h"

#define VMDK_SECTOR 512u

/* Limits on what a file may claim (beyond them the image is refused). */
#define VMDK_DESC_MAX (1u << 20)          /* descriptor text read, bytes */
#define VMDK_MAX_EXTENTS 4096u            /* extent lines in one descriptor */
#define VMDK_MAX_NAME 4096u               /* an extent or parent file name */
#define VMDK_MAX_DDB 64u                  /* ddb.* entries kept for info */
#define VMDK_MAX_EXTENT_SECTORS (1ull << 39)   /* 256 TiB per extent */
#define VMDK_MAX_DISK_BYTES (1ull << 48)       /* 256 TiB per disk */

/* ------------------------------------------------------------------------
 * Descriptor (text)
 * ---------------------------------------------------------------------- */

enum vmdk_access { VMDK_RW, VMDK_RDONLY, VMDK_NOACCESS };

enum vmdk_etype {
    VMDK_ET_FLAT,        /* raw bytes at an offset of a file */
    VMDK_ET_SPARSE,      /* a hosted sparse file (KDMV) */
    VMDK_ET_ZERO,        /* no file: reads as zeros */
    VMDK_ET_VMFS,        /* ESX flat file */
    VMDK_ET_VMFSSPARSE,  /* ESX delta (COWD, or KDMV) */
    VMDK_ET_VMFSRDM,     /* raw device mapping: flat over a device */
    VMDK_ET_VMFSRAW,
    VMDK_ET_SESPARSE,    /* ESX space-efficient sparse: not read */
    VMDK_ET_UNKNOWN,
};

struct vmdk_dext {
    enum vmdk_access access;
    enum vmdk_etype type;
    char type_name[16];     /* as written (cut) */
    uint64_t sectors;       /* as written */
    char *file;             /* NULL for ZERO */
    uint64_t offset;        /* sectors, FLAT/VMFS only */
    unsigned line;          /* 1-based line in the descriptor */
    bool malformed;         /* an access word, but not a valid extent line */
};

struct vmdk_kv {
    char *key, *val;
};

struct vmdk_desc {
    unsigned version;          /* 0 when absent */
    bool has_cid, has_parent_cid;
    uint32_t cid, parent_cid;
    char *create_type;         /* NULL when absent */
    char *parent_hint;         /* parentFileNameHint, NULL when absent/empty */
    char *ctk_path;            /* changeTrackPath (a -ctk.vmdk file), or NULL */
    struct vmdk_dext *ext;     /* at most VMDK_MAX_EXTENTS kept */
    size_t next;               /* kept */
    size_t ext_cap;            /* allocated */
    size_t next_total;         /* extent lines seen */
    struct vmdk_kv ddb[VMDK_MAX_DDB];
    size_t nddb;
    size_t bad_lines;          /* lines that could not be understood */
    unsigned first_bad_line;
    char first_bad[96];        /* the first of them, cut and made printable */
    bool truncated;            /* text longer than VMDK_DESC_MAX */
};

/* Parses descriptor text (len bytes, stops at a NUL).  Never fails: what is
 * not understood is counted in bad_lines.  Free with vmdk_desc_free. */
void vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d);
void vmdk_desc_free(struct vmdk_desc *d);

/* True when head looks like descriptor text: "# Disk DescriptorFile" near
 * the start, or comments and blank lines followed by "version=N" or a
 * "createType=" line, with no binary bytes before it. */
bool vmdk_desc_probe(const uint8_t *head, size_t len);

const char *vmdk_access_name(enum vmdk_access a);
const char *vmdk_etype_name(enum vmdk_etype t);
/* True for extent types whose data is a plain file at an offset. */
bool vmdk_etype_flat(enum vmdk_etype t);

/* ------------------------------------------------------------------------
 * Sparse extent headers (binary, little-endian)
 * ---------------------------------------------------------------------- */

#define VMDK4_MAGIC "KDMV"
#define VMDK3_MAGIC "COWD"
#define VMDK4_GD_AT_END UINT64_MAX

#define VMDK4_FLAG_NL_DETECT (1u << 0)
#define VMDK4_FLAG_RGD (1u << 1)
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK4_FLAG_COMPRESSED (1u << 16)
#define VMDK4_FLAG_MARKERS (1u << 17)

#define VMDK_COMPRESS_NONE 0
#define VMDK_COMPRESS_DEFLATE 1

#define VMDK_MARKER_EOS 0
#define VMDK_MARKER_GT 1
#define VMDK_MARKER_GD 2
#define VMDK_MARKER_FOOTER 3

#define VMDK_GTE_ZEROED 1u
#define VMDK_MAX_GTES 512u                 /* VMDK4 GTEs per grain table */
#define VMDK3_GTES 4096u                   /* COWD: fixed */
#define VMDK_MAX_GRAIN_SECTORS 0x200000u   /* 1 GiB */
#define VMDK_MAX_CGRAIN_SECTORS 0x8000u    /* 16 MiB: compressed grains */

/* One sparse header, from KDMV (version 1-3) or COWD files. */
struct vmdk_sparse_hdr {
    bool cowd;               /* VMDK3 "COWD" */
    uint32_t version, flags;
    uint64_t capacity;       /* sectors */
    uint64_t grain;          /* sectors */
    uint64_t desc_off, desc_size;   /* sectors */
    uint32_t gtes;           /* entries per grain table */
    uint64_t rgd_off, gd_off;       /* sectors */
    uint64_t overhead;       /* sectors */
    uint64_t gd_entries;     /* COWD: as stored; KDMV: computed */
    bool unclean;
    uint8_t nl_chars[4];     /* '\n' ' ' '\r' '\n' when intact */
    uint16_t compress;
};

/* Parses the first 512 bytes of a sparse extent (KDMV or COWD).  Returns 0
 * or -EINVAL with a reason in why (static text). */
int vmdk_sparse_parse(const uint8_t *buf, size_t len, struct vmdk_sparse_hdr *h,
                      const char **why);
/* Checks the values (sizes, counts) of a parsed header; gd_entries is set. */
int vmdk_sparse_check(struct vmdk_sparse_hdr *h, char *msg, size_t msglen);

#endif
