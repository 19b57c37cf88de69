/* vmfs — GUID partition tables.
 *
 * The primary header is at LBA 1, the backup usually at the last LBA (the
 * primary's alternate_lba says where).  A header counts when its signature,
 * size, CRC32, own LBA and entry-array geometry are right and its entry
 * array's CRC32 matches; otherwise the other copy is tried, and using the
 * backup is reported.  The logical sector size is 512 or 4096: the one at
 * whose LBA 1 "EFI PART" is found, or, with no primary, the one whose
 * backup is found.  Partitions are numbered by entry index + 1; empty
 * entries (zero type GUID) keep their numbers. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>

#include "vol/vol_internal.h"

struct gpt_hdr {
    uint64_t my_lba, alt_lba, first_usable, last_usable, entries_lba;
    uint32_t nentries, entry_size, entries_crc;
    uint8_t disk_guid[16];
};

enum gpt_why {
    G_OK, G_UNREADABLE, G_NOSIG, G_BADSIZE, G_BADCRC, G_BADLBA, G_BADGEOM,
    G_OUTSIDE, G_ENTRIES_CRC,
};

static const char *why_str(enum gpt_why w)
{
    switch (w) {
    case G_OK: return "valid";
    case G_UNREADABLE: return "outside the disk or unreadable";
    case G_NOSIG: return "missing (no \"EFI PART\" signature)";
    case G_BADSIZE: return "damaged (bad header size)";
    case G_BADCRC: return "damaged (header checksum mismatch)";
    case G_BADLBA: return "damaged (it names another LBA as its own)";
    case G_BADGEOM: return "unusable (absurd partition entry count or size)";
    case G_OUTSIDE: return "unusable (its partition entries lie outside the disk)";
    case G_ENTRIES_CRC: return "unusable (partition entry array checksum mismatch)";
    }
    return "?";
}

static enum gpt_why read_header(struct vl *vl, uint32_t ss, uint64_t lba, struct gpt_hdr *h)
{
    uint64_t off;
    uint8_t *b = xmalloc(ss);
    enum gpt_why w = G_OK;
    if (ckd_mul_u64(&off, lba, ss) || vl_read(vl, b, ss, off) < 0)
        w = G_UNREADABLE;
    else if (memcmp(b, "EFI PART", 8))
        w = G_NOSIG;
    uint32_t hsize = w == G_OK ? get_le32(b + 12) : 0;
    if (w == G_OK && (hsize < 92 || hsize > ss))
        w = G_BADSIZE;
    if (w == G_OK) {
        uint32_t crc = get_le32(b + 16);
        memset(b + 16, 0, 4);
        if (gpt_crc32(b, hsize) != crc)
            w = G_BADCRC;
    }
    if (w == G_OK) {
        h->my_lba = get_le64(b + 24);
        h->alt_lba = get_le64(b + 32);
        h->first_usable = get_le64(b + 40);
        h->last_usable = get_le64(b + 48);
        memcpy(h->disk_guid, b + 56, 16);
        h->entries_lba = get_le64(b + 72);
        h->nentries = get_le32(b + 80);
        h->entry_size = get_le32(b + 84);
        h->entries_crc = get_le32(b + 88);
        uint64_t total;
        if (h->my_lba != lba)
            w = G_BADLBA;
        else if (h->entry_size < 128 || h->entry_size % 128 ||
                 h->entry_size > VL_MAX_GPT_ENTRY ||
                 ckd_mul_u64(&total, h->nentries, h->entry_size) || total > VL_MAX_GPT_ARRAY ||
                 h->first_usable > h->last_usable)
            w = G_BADGEOM;
    }
    free(b);
    return w;
}

/* Reads and checks the entry array; *arr is malloc'ed on success. */
static enum gpt_why read_entries(struct vl *vl, uint32_t ss, const struct gpt_hdr *h,
                                 uint8_t **arr)
{
    size_t len = (size_t)h->nentries * h->entry_size;
    uint64_t off;
    *arr = NULL;
    if (ckd_mul_u64(&off, h->entries_lba, ss) || !range_in(off, len, vl->disk->size))
        return G_OUTSIDE;
    uint8_t *a = xmalloc(len);
    if (vl_read(vl, a, len, off) < 0) {
        free(a);
        return G_OUTSIDE;
    }
    if (gpt_crc32(a, len) != h->entries_crc) {
        free(a);
        return G_ENTRIES_CRC;
    }
    *arr = a;
    return G_OK;
}

static enum gpt_why read_both(struct vl *vl, uint32_t ss, uint64_t lba, struct gpt_hdr *h,
                              uint8_t **arr)
{
    *arr = NULL;
    enum gpt_why w = read_header(vl, ss, lba, h);
    return w == G_OK ? read_entries(vl, ss, h, arr) : w;
}

/* UTF-16LE (NUL-terminated or n units) to UTF-8; bad surrogates become
 * U+FFFD.  Returns a malloc'ed string. */
static char *utf16le_to_utf8(const uint8_t *p, size_t n)
{
    char *out = xmalloc(n * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = get_le16(p + 2 * i);
        if (!c)
            break;
        if (c >= 0xd800 && c < 0xdc00 && i + 1 < n) {
            uint32_t d = get_le16(p + 2 * i + 2);
            if (d >= 0xdc00 && d < 0xe000) {
                c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
                i++;
            }
        }
        if (c >= 0xd800 && c < 0xe000)
            c = 0xfffd;
        if (c < 0x80) {
            out[o++] = (char)c;
        } else if (c < 0x800) {
            out[o++] = (char)(0xc0 | c >> 6);
            out[o++] = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            out[o++] = (char)(0xe0 | c >> 12);
            out[o++] = (char)(0x80 | (c >> 6 & 0x3f));
            out[o++] = (char)(0x80 | (c & 0x3f));
        } else {
            out[o++] = (char)(0xf0 | c >> 18);
            out[o++] = (char)(0x80 | (c >> 12 & 0x3f));
            out[o++] = (char)(0x80 | (c >> 6 & 0x3f));
            out[o++] = (char)(0x80 | (c & 0x3f));
        }
    }
    out[o] = 0;
    return out;
}

static void add_entries(struct vl *vl, uint32_t ss, const struct gpt_hdr *h, const uint8_t *arr)
{
    uint64_t disk_lbas = vl->disk->size / ss;
    if (h->last_usable >= disk_lbas)
        vl_problem(vl, "GPT: the table's usable area ends at LBA %" PRIu64 " but the disk has "
                   "only %" PRIu64 " sectors of %" PRIu32 " bytes (truncated image?)",
                   h->last_usable, disk_lbas, ss);
    for (uint32_t i = 0; i < h->nentries; i++) {
        const uint8_t *e = arr + (size_t)i * h->entry_size;
        if (guid_is_zero(e))
            continue;
        uint64_t first = get_le64(e + 32), last = get_le64(e + 40), start, size;
        if (first > last || ckd_mul_u64(&start, first, ss) ||
            ckd_mul_u64(&size, last - first + 1, ss) || ckd_add_u64(&(uint64_t){0}, start, size)) {
            vl_problem(vl, "GPT: entry %" PRIu32 " has an impossible range (LBA %" PRIu64
                       " to %" PRIu64 "); ignored", i + 1, first, last);
            continue;
        }
        struct vpart *p = vl_add_part(vl);
        p->number = i + 1;
        p->kind = VP_GPT;
        p->start = start;
        p->size = size;
        p->sector_size = ss;
        memcpy(p->type_guid, e, 16);
        memcpy(p->uniq_guid, e + 16, 16);
        p->attrs = get_le64(e + 48);
        p->name = utf16le_to_utf8(e + 56, 36);
        if (first < h->first_usable || last > h->last_usable)
            vl_problem(vl, "GPT: partition p%" PRIu32 " (LBA %" PRIu64 "-%" PRIu64 ") lies "
                       "outside the usable area (LBA %" PRIu64 "-%" PRIu64 ")", p->number,
                       first, last, h->first_usable, h->last_usable);
    }
}

static void use(struct vl *vl, uint32_t ss, const struct gpt_hdr *h, const uint8_t *arr,
                bool backup)
{
    vl->sector_size = ss;
    vl->gpt_backup_used = backup;
    vl->gpt_header_lba = h->my_lba;
    vl->gpt_first_usable = h->first_usable;
    vl->gpt_last_usable = h->last_usable;
    vl->gpt_nentries = h->nentries;
    vl->gpt_entry_size = h->entry_size;
    memcpy(vl->disk_guid, h->disk_guid, 16);
    add_entries(vl, ss, h, arr);
}

/* The primary is good: says so if the backup is not. */
static void check_backup(struct vl *vl, uint32_t ss, const struct gpt_hdr *p)
{
    struct gpt_hdr b;
    uint8_t *arr;
    enum gpt_why w = read_both(vl, ss, p->alt_lba, &b, &arr);
    free(arr);
    if (w != G_OK)
        vl_problem(vl, "GPT: the backup header at LBA %" PRIu64 " is %s; the primary is used",
                   p->alt_lba, why_str(w));
}

bool gpt_scan(struct vl *vl, bool hint4k)
{
    const uint32_t sizes[2] = {hint4k ? 4096 : 512, hint4k ? 512 : 4096};
    struct gpt_hdr prim[2], h;
    enum gpt_why pw[2];
    uint8_t *arr;
    for (int k = 0; k < 2; k++) {
        pw[k] = read_both(vl, sizes[k], 1, &prim[k], &arr);
        if (pw[k] == G_OK) {
            use(vl, sizes[k], &prim[k], arr, false);
            free(arr);
            check_backup(vl, sizes[k], &prim[k]);
            return true;
        }
    }
    /* No good primary: a backup at the last LBA or where a primary with a
     * good header said it is. */
    for (int k = 0; k < 2; k++) {
        uint32_t ss = sizes[k];
        uint64_t cand[2];
        int nc = 0;
        if (vl->disk->size / ss >= 2)
            cand[nc++] = vl->disk->size / ss - 1;
        if ((pw[k] == G_ENTRIES_CRC || pw[k] == G_OUTSIDE) && (!nc || prim[k].alt_lba != cand[0]))
            cand[nc++] = prim[k].alt_lba;
        for (int c = 0; c < nc; c++) {
            if (cand[c] <= 1 || read_both(vl, ss, cand[c], &h, &arr) != G_OK)
                continue;
            vl_problem(vl, "GPT: the primary header at LBA 1 (%" PRIu32 "-byte sectors) is %s; "
                       "using the backup at LBA %" PRIu64, ss, why_str(pw[k]), cand[c]);
            use(vl, ss, &h, arr, true);
            free(arr);
            return true;
        }
    }
    vl_problem(vl, "GPT: no valid header: the primary at LBA 1 (%" PRIu32 "-byte sectors) "
               "is %s and no valid backup was found", sizes[0], why_str(pw[0]));
    return false;
}

const char *gpt_type_name(const uint8_t g[16])
{
    static const struct { const char *guid, *name; } t[] = {
        {"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"},
        {"024DEE41-33E7-11D3-9D69-0008C781F39F", "MBR partition scheme"},
        {"21686148-6449-6E6F-744E-656564454649", "BIOS boot"},
        {"D3BFE2DE-3DAF-11DF-BA40-E3A556D89593", "Intel Fast Flash"},
        {"9E1A2D38-C612-4316-AA26-8B49521E5A8B", "PowerPC PReP boot"},
        {"E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"},
        {"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"},
        {"5808C8AA-7E8F-42E0-85D2-E1E90434CFB3", "Microsoft LDM metadata"},
        {"AF9B60A0-1431-4F62-BC68-3311714A69AD", "Microsoft LDM data"},
        {"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery environment"},
        {"E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D", "Microsoft Storage Spaces"},
        {"0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"},
        {"E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"},
        {"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"},
        {"A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"},
        {"933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"},
        {"3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux server data"},
        {"4D21B016-B534-45C2-A9FB-5C16E091FD2D", "Linux variable data"},
        {"7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "Linux temporary data"},
        {"BC13C2FF-59E6-4262-A352-B275FD6F7172", "Linux extended boot"},
        {"CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"},
        {"7FFEC5C9-2D00-49B7-8941-3EA10A5586B7", "Linux dm-crypt"},
        {"8DA63339-0007-60C0-C436-083AC8230908", "Linux reserved"},
        {"44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"},
        {"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"},
        {"69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "Linux root (ARM)"},
        {"B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM-64)"},
        {"72EC70A6-CF74-40E6-BD49-4BDA08E8F224", "Linux root (RISC-V-64)"},
        {"75250D76-8CC6-458E-BD66-BD47CC81A812", "Linux /usr (x86)"},
        {"8484680C-9521-48C6-9C11-B0720656F69E", "Linux /usr (x86-64)"},
        {"B0E01050-EE5F-4390-949A-9101B17104E9", "Linux /usr (ARM-64)"},
        {"516E7CB4-6ECF-11D6-8FF8-00022D09712B", "FreeBSD data"},
        {"83BD6B9D-7F41-11DC-BE0B-001560B84F0F", "FreeBSD boot"},
        {"516E7CB5-6ECF-11D6-8FF8-00022D09712B", "FreeBSD swap"},
        {"516E7CB6-6ECF-11D6-8FF8-00022D09712B", "FreeBSD UFS"},
        {"516E7CBA-6ECF-11D6-8FF8-00022D09712B", "FreeBSD ZFS"},
        {"48465300-0000-11AA-AA11-00306543ECAC", "Apple HFS/HFS+"},
        {"7C3457EF-0000-11AA-AA11-00306543ECAC", "Apple APFS"},
        {"426F6F74-0000-11AA-AA11-00306543ECAC", "Apple boot"},
        {"6A898CC3-1DD2-11B2-99A6-080020736631", "Solaris /usr & Apple ZFS"},
        {"824CC7A0-36A8-11E3-890A-952519AD3F61", "OpenBSD data"},
        {"49F48D5A-B10E-11DC-B99B-0019D1879648", "NetBSD FFS"},
        {"FE3A2A5D-4F32-41A7-B725-ACCC3285A309", "ChromeOS kernel"},
        {"3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC", "ChromeOS root fs"},
        {"AA31E02A-400F-11DB-9590-000C2911D1B8", "VMware VMFS"},
        {"9D275380-40AD-11DB-BF97-000C2911D1B8", "VMware Diagnostic"},
        {"4FBD7E29-9D25-41B8-AFD0-062C0CEFF05D", "Ceph OSD"},
    };
    char s[37];
    guid_to_str(g, s);
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(t); i++)
        if (!strcmp(t[i].guid, s))
            return t[i].name;
    return "unknown";
}
