/* vmfs — what the volume scanners (layout, MBR, GPT, LVM) share inside
 * src/vol.  Nothing here is part of the volume interface (vmfs/vol.h).
 *
 * A scan builds one struct vl: the public layout (volumes, facts,
 * problems) plus the model the facts are rendered from, so that
 * vlayout_report can render them again into any report.  Everything runs
 * on the scanning thread. */
#ifndef VMFS_VOL_INTERNAL_H
#define VMFS_VOL_INTERNAL_H

#include "vmfs/common.h"
#include "vmfs/report.h"
#include "vmfs/vol.h"

/* Bounds on what an image may make a scan do. */
#define VL_MAX_LOGICAL 256          /* logical partitions in all EBR chains */
#define VL_MAX_EBR 1024             /* EBRs visited in all chains */
#define VL_MAX_GPT_ARRAY (1u << 20) /* bytes of GPT entry array */
#define VL_MAX_GPT_ENTRY 4096       /* bytes of one GPT entry */
#define VL_MAX_PROBLEMS 200         /* problems kept; the rest are counted */

/* What a signature scan found in a volume or on the whole disk. */
struct vcontent {
    const char *type;               /* "ext4", "LVM2 PV", …; NULL: unknown */
    char label[80];                 /* UTF-8, "" when none */
    char uuid[48];                  /* "" when none */
    const char *note;               /* e.g. "not followed"; NULL when none */
};

enum vpart_kind { VP_PRIMARY, VP_EXTENDED, VP_LOGICAL, VP_GPT };

/* One partition table entry, as the table says (start and size in bytes)
 * and as shown (avail bytes inside the disk; 0 when not shown). */
struct vpart {
    uint32_t number;
    enum vpart_kind kind;
    uint64_t start, size, avail;
    uint32_t sector_size;           /* the table's logical sector size */
    uint8_t mbr_type;
    bool bootable;
    uint8_t type_guid[16], uniq_guid[16];
    uint64_t attrs;
    char *name;                     /* GPT name in UTF-8, or NULL */
    size_t vol;                     /* index in vols, or SIZE_MAX */
    struct vcontent content;
};

enum vpt { VPT_NONE, VPT_MBR, VPT_GPT };

struct lvm_state;

struct vl {
    struct vlayout pub;             /* must stay first */
    const struct vdisk *disk;       /* only during the scan */
    size_t volcap, probcap;
    size_t dropped_problems;
    bool read_error_reported;

    enum vpt pt;
    uint32_t sector_size;
    /* MBR */
    uint32_t mbr_disk_id;
    bool hybrid_mbr;
    /* GPT */
    uint8_t disk_guid[16];
    bool gpt_backup_used;
    uint64_t gpt_header_lba, gpt_first_usable, gpt_last_usable;
    uint32_t gpt_nentries, gpt_entry_size;

    struct vpart *parts;
    size_t nparts, partcap;
    struct vcontent disk_content;   /* when pt == VPT_NONE */
    struct lvm_state *lvm;
};

static inline struct vl *vl_of(const struct vlayout *lay)
{
    return (struct vl *)lay;
}

/* layout.c */
void vl_problem(struct vl *vl, const char *fmt, ...) VMFS_PRINTF(2, 3);
/* Reads [off, off+len) of the disk; -1 when outside it or unreadable (a
 * read error is reported once). */
int vl_read(struct vl *vl, void *buf, size_t len, uint64_t off);
/* Reads [off, off+len) of a volume through its segments; -1 as vl_read. */
int vl_vol_read(struct vl *vl, const struct vvolume *v, void *buf, size_t len,
                uint64_t off);
struct vpart *vl_add_part(struct vl *vl);
/* Adds a volume; takes ownership of path and segs.  Returns its index. */
size_t vl_add_volume(struct vl *vl, enum vvol_kind kind, char *path, uint64_t size,
                     struct vvol_seg *segs, size_t nsegs);
/* One segment mapping [0, size) to disk bytes [disk_off, disk_off+size). */
struct vvol_seg *vl_linear_seg(uint64_t size, uint64_t disk_off);
void vl_probe_content(struct vl *vl, const struct vvolume *v, struct vcontent *c);

/* crc.c-like helpers in layout.c: the reflected CRC-32 (polynomial
 * 0xEDB88320) without the initial and final inversions; GPT's CRC-32 is
 * ~vol_crc32(~0u, …), LVM's is vol_crc32(0xf597a6cf, …). */
uint32_t vol_crc32(uint32_t crc, const void *buf, size_t len);
static inline uint32_t gpt_crc32(const void *buf, size_t len)
{
    return ~vol_crc32(0xffffffffu, buf, len);
}
#define LVM_INITIAL_CRC 0xf597a6cfu

/* "01234567-89AB-CDEF-0123-456789ABCDEF" (GPT mixed-endian order). */
void guid_to_str(const uint8_t g[16], char out[37]);
bool guid_is_zero(const uint8_t g[16]);

/* mbr.c: sector 0 (512 bytes) of the disk. */
struct mbr_info {
    bool signature;                 /* 0x55AA */
    bool sane;                      /* boot flags 0 or 0x80 */
    bool has_ee;                    /* a GPT protective entry */
    unsigned nused;                 /* non-empty entries */
    unsigned nother;                /* non-empty entries other than 0xEE */
};
void mbr_inspect(const uint8_t s0[512], struct mbr_info *mi);
void mbr_scan(struct vl *vl, const uint8_t s0[512]);
const char *mbr_type_name(uint8_t type);

/* gpt.c: returns true when a GPT (primary or backup) was found and its
 * partitions added; false (with a problem said) when none is valid.
 * hint4k: "EFI PART" is at byte 4096, not 512: 4096-byte sectors first. */
bool gpt_scan(struct vl *vl, bool hint4k);
const char *gpt_type_name(const uint8_t g[16]);

/* lvm.c */
void lvm_scan(struct vl *vl);
/* Adds "lvm" to root; only when vl->lvm is set. */
void lvm_report(const struct vl *vl, struct rep *root);
void lvm_free(struct lvm_state *st);
/* True when [0, 2048) of a volume holds an LVM2 label (cheap check). */
bool lvm_has_label(const uint8_t *head, size_t len);

/* lvm_text.c: LVM2's metadata text ("config tree") format.
 *
 *   # comment
 *   key = 42                 key = "string with \" escapes"
 *   key = [ "a", 1, "b" ]    name { …members… }
 *
 * Parsed without recursion into a tree of nodes; sections nest at most
 * LT_MAX_DEPTH deep; arrays hold scalars only. */
#define LT_MAX_DEPTH 32
#define LT_MAX_NODES (512u * 1024)
enum lt_type { LT_SECTION, LT_STR, LT_INT, LT_FLOAT, LT_ARRAY };
struct lt_node {
    enum lt_type type;
    const char *key;                /* NULL for the root and array elements */
    const char *str;                /* LT_STR and LT_FLOAT (the digits) */
    int64_t num;                    /* LT_INT */
    uint32_t child, next;           /* 1-based node indices; 0: none */
};
struct lt_doc {
    struct lt_node *n;              /* n[0] is unused; n[1] is the root */
    size_t count, cap;
    char *store;                    /* keys and strings */
    size_t storelen;
};
/* Parses len bytes (stopping at a NUL).  Returns 0, or -1 with *err a
 * malloc'ed message ("line N: …").  Free the doc with lt_free either way. */
int lt_parse(struct lt_doc *d, const char *text, size_t len, char **err);
void lt_free(struct lt_doc *d);
const struct lt_node *lt_root(const struct lt_doc *d);
const struct lt_node *lt_first(const struct lt_doc *d, const struct lt_node *parent);
const struct lt_node *lt_next(const struct lt_doc *d, const struct lt_node *n);
const struct lt_node *lt_get(const struct lt_doc *d, const struct lt_node *sec, const char *key);
/* A member's value, when it exists with that type (u64: a non-negative
 * integer). */
const char *lt_str(const struct lt_doc *d, const struct lt_node *sec, const char *key);
bool lt_u64(const struct lt_doc *d, const struct lt_node *sec, const char *key, uint64_t *v);
/* True when the array member key holds the string s. */
bool lt_has(const struct lt_doc *d, const struct lt_node *sec, const char *key, const char *s);

#endif
