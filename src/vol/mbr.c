/* vmfs — MBR partition tables: the four primary entries in sector 0 and
 * the chain of extended boot records (EBRs) that holds logical partitions.
 *
 * Numbering is Linux's: primaries are 1-4 by slot (empty slots keep their
 * number), logical partitions are 5, 6, … in chain order.  Sectors are 512
 * bytes.  The chain is untrusted: the walk visits at most VL_MAX_EBR
 * records, stops at the first record it has seen before, and keeps at most
 * VL_MAX_LOGICAL logical partitions. */
#include "config.h"

#include <inttypes.h>

#include "vol/vol_internal.h"

#define MBR_TABLE 0x1be

struct mbr_entry {
    uint8_t boot, type;
    uint32_t start, count;   /* in sectors */
};

static void entry_at(const uint8_t *s, int slot, struct mbr_entry *e)
{
    const uint8_t *p = s + MBR_TABLE + 16 * slot;
    e->boot = p[0];
    e->type = p[4];
    e->start = get_le32(p + 8);
    e->count = get_le32(p + 12);
}

static bool entry_used(const struct mbr_entry *e) { return e->type != 0 && e->count != 0; }

static bool is_extended(uint8_t t) { return t == 0x05 || t == 0x0f || t == 0x85; }

void mbr_inspect(const uint8_t s0[512], struct mbr_info *mi)
{
    memset(mi, 0, sizeof *mi);
    mi->signature = get_le16(s0 + 510) == 0xAA55;
    mi->sane = true;
    for (int i = 0; i < 4; i++) {
        struct mbr_entry e;
        entry_at(s0, i, &e);
        if (e.boot != 0 && e.boot != 0x80)
            mi->sane = false;
        if (!entry_used(&e))
            continue;
        mi->nused++;
        if (e.type == 0xee)
            mi->has_ee = true;
        else
            mi->nother++;
    }
}

static struct vpart *add(struct vl *vl, uint32_t number, enum vpart_kind kind,
                         const struct mbr_entry *e, uint64_t start_sector)
{
    struct vpart *p = vl_add_part(vl);
    p->number = number;
    p->kind = kind;
    p->start = start_sector * 512;
    p->size = (uint64_t)e->count * 512;
    p->sector_size = 512;
    p->mbr_type = e->type;
    p->bootable = e->boot == 0x80;
    return p;
}

/* The walk over every extended partition's chain: shared bounds. */
struct ebr_walk {
    uint64_t visited[VL_MAX_EBR];
    size_t nvisited;
    uint32_t nlogical;
    bool stopped;
};

static bool seen(const struct ebr_walk *w, uint64_t sector)
{
    for (size_t i = 0; i < w->nvisited; i++)
        if (w->visited[i] == sector)
            return true;
    return false;
}

/* Reads the EBR at sector cur; adds its logical partitions; returns the
 * next EBR's sector, or 0 at the end of the chain. */
static uint64_t one_ebr(struct vl *vl, struct ebr_walk *w, uint32_t ext_no,
                        uint64_t ext_start, uint64_t ext_count, uint64_t cur)
{
    uint8_t s[512];
    if (vl_read(vl, s, sizeof s, cur * 512) < 0) {
        vl_problem(vl, "MBR: the extended boot record at sector %" PRIu64 " (chain of p%" PRIu32
                   ") lies outside the disk; the chain stops there", cur, ext_no);
        return 0;
    }
    if (get_le16(s + 510) != 0xAA55) {
        vl_problem(vl, "MBR: the extended boot record at sector %" PRIu64 " has no 0x55AA "
                   "signature; the chain stops there", cur);
        return 0;
    }
    uint64_t next = 0;
    for (int i = 0; i < 4; i++) {
        struct mbr_entry e;
        entry_at(s, i, &e);
        if (!entry_used(&e))
            continue;
        if (is_extended(e.type)) {
            if (!next)
                next = ext_start + e.start;
            continue;
        }
        uint64_t start = cur + e.start;
        /* Slots 3 and 4 of an EBR often hold garbage: keep them only when
         * they lie inside the extended partition, as Linux does. */
        if (i >= 2 && (start < ext_start || start + e.count > ext_start + ext_count))
            continue;
        if (w->nlogical >= VL_MAX_LOGICAL) {
            vl_problem(vl, "MBR: more than %d logical partitions; the rest are ignored",
                       VL_MAX_LOGICAL);
            w->stopped = true;
            return 0;
        }
        struct vpart *p = add(vl, 5 + w->nlogical++, VP_LOGICAL, &e, start);
        if (start < ext_start || start + e.count > ext_start + ext_count)
            vl_problem(vl, "MBR: logical partition p%" PRIu32 " lies outside its extended "
                       "partition p%" PRIu32, p->number, ext_no);
    }
    return next;
}

static void walk_chain(struct vl *vl, struct ebr_walk *w, uint32_t ext_no,
                       uint64_t ext_start, uint64_t ext_count)
{
    uint64_t cur = ext_start;
    while (cur && !w->stopped) {
        if (seen(w, cur)) {
            vl_problem(vl, "MBR: the chain of extended boot records loops back to sector "
                       "%" PRIu64 "; it stops there", cur);
            return;
        }
        if (w->nvisited == VL_MAX_EBR) {
            vl_problem(vl, "MBR: more than %d extended boot records; the chain stops there",
                       VL_MAX_EBR);
            w->stopped = true;
            return;
        }
        w->visited[w->nvisited++] = cur;
        cur = one_ebr(vl, w, ext_no, ext_start, ext_count, cur);
    }
}

void mbr_scan(struct vl *vl, const uint8_t s0[512])
{
    vl->mbr_disk_id = get_le32(s0 + 0x1b8);
    struct ebr_walk *w = xcalloc(1, sizeof *w);
    struct mbr_entry ext[4];
    uint32_t ext_no[4];
    int next = 0;
    for (int i = 0; i < 4; i++) {
        struct mbr_entry e;
        entry_at(s0, i, &e);
        if (!entry_used(&e))
            continue;
        bool x = is_extended(e.type);
        add(vl, (uint32_t)i + 1, x ? VP_EXTENDED : VP_PRIMARY, &e, e.start);
        if (x) {
            ext_no[next] = (uint32_t)i + 1;
            ext[next++] = e;
        }
    }
    /* Logical partitions are numbered after all primaries, chain by chain. */
    for (int i = 0; i < next; i++)
        walk_chain(vl, w, ext_no[i], ext[i].start, ext[i].count);
    free(w);
}

const char *mbr_type_name(uint8_t type)
{
    static const struct { uint8_t id; const char *name; } t[] = {
        {0x00, "Empty"}, {0x01, "FAT12"}, {0x04, "FAT16 <32M"}, {0x05, "Extended"},
        {0x06, "FAT16"}, {0x07, "HPFS/NTFS/exFAT"}, {0x0b, "W95 FAT32"},
        {0x0c, "W95 FAT32 (LBA)"}, {0x0e, "W95 FAT16 (LBA)"}, {0x0f, "W95 Extended (LBA)"},
        {0x11, "Hidden FAT12"}, {0x12, "Compaq diagnostics"}, {0x14, "Hidden FAT16 <32M"},
        {0x16, "Hidden FAT16"}, {0x17, "Hidden HPFS/NTFS"}, {0x1b, "Hidden W95 FAT32"},
        {0x1c, "Hidden W95 FAT32 (LBA)"}, {0x1e, "Hidden W95 FAT16 (LBA)"},
        {0x27, "Hidden NTFS WinRE"}, {0x39, "Plan 9"}, {0x41, "PPC PReP Boot"},
        {0x42, "SFS / Windows dynamic disk"}, {0x4d, "QNX4.x"}, {0x63, "GNU HURD or SysV"},
        {0x80, "Old Minix"}, {0x81, "Minix / old Linux"}, {0x82, "Linux swap / Solaris"},
        {0x83, "Linux"}, {0x84, "OS/2 hidden or Intel hibernation"},
        {0x85, "Linux extended"}, {0x86, "NTFS volume set"}, {0x87, "NTFS volume set"},
        {0x88, "Linux plaintext"}, {0x8e, "Linux LVM"}, {0x93, "Amoeba"},
        {0x9f, "BSD/OS"}, {0xa0, "IBM Thinkpad hibernation"}, {0xa5, "FreeBSD"},
        {0xa6, "OpenBSD"}, {0xa8, "Darwin UFS"}, {0xa9, "NetBSD"}, {0xab, "Darwin boot"},
        {0xaf, "HFS / HFS+"}, {0xbe, "Solaris boot"}, {0xbf, "Solaris"},
        {0xda, "Non-FS data"}, {0xde, "Dell Utility"}, {0xea, "Linux extended boot"},
        {0xeb, "BeOS fs"}, {0xee, "GPT protective"}, {0xef, "EFI (FAT-12/16/32)"},
        {0xf8, "EBBR protective"}, {0xfb, "VMware VMFS"}, {0xfc, "VMware VMKCORE"},
        {0xfd, "Linux raid autodetect"},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(t); i++)
        if (t[i].id == type)
            return t[i].name;
    return "unknown";
}
