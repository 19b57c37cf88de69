/* Unit tests: partition tables (MBR, GPT) and LVM2 on synthetic disks built
 * in memory, the signature table, the metadata text parser, and damage:
 * loops, deep chains, tables past the end, absurd counts, bad checksums,
 * malformed text, random corruption. */
#include "config.h"

#include "unit.h"
#include "vmfs/report.h"
#include "vmfs/vol.h"
#include "vol/vol_internal.h"

#define MiB (1024ull * 1024)

/* ---- a disk in memory -------------------------------------------------- */

struct mdisk {
    uint8_t *b;
    uint64_t size;
    struct vdisk vd;
    unsigned reads;
};

static int mread(void *ctx, void *buf, size_t len, uint64_t off)
{
    struct mdisk *m = ctx;
    ck_assert(off <= m->size && len <= m->size - off);
    m->reads++;
    memcpy(buf, m->b + off, len);
    return 0;
}

static struct mdisk *mdisk_new(uint64_t size)
{
    struct mdisk *m = calloc(1, sizeof *m);
    m->b = calloc(1, size);
    m->size = size;
    m->vd = (struct vdisk){.size = size, .read = mread, .ctx = m};
    return m;
}

/* Every 32-bit word holds its own disk offset / 4: reads through a volume
 * show where they came from. */
static void mdisk_pattern(struct mdisk *m)
{
    for (uint64_t o = 0; o + 4 <= m->size; o += 4) {
        uint32_t v = (uint32_t)(o / 4);
        memcpy(m->b + o, &v, 4);
    }
}

static void mdisk_free(struct mdisk *m)
{
    free(m->b);
    free(m);
}

/* Bitwise CRC-32 (reflected, 0xEDB88320, no inversions): independent of
 * the table-driven one under test. */
static uint32_t tcrc(uint32_t c, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c;
}
static uint32_t gcrc(const void *b, size_t n) { return ~tcrc(0xffffffffu, b, n); }
static uint32_t lcrc(const void *b, size_t n) { return tcrc(0xf597a6cfu, b, n); }

static struct vlayout *scan(struct mdisk *m) { return vlayout_scan(&m->vd); }

/* Reads len bytes of a volume through vvol_map. */
static void vread(struct mdisk *m, const struct vvolume *v, uint64_t off, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        uint64_t d, n;
        vvol_map(v, off, len, &d, &n);
        ck_assert_uint_gt(n, 0);
        ck_assert(d + n <= m->size);
        memcpy(p, m->b + d, n);
        p += n, off += n, len -= n;
    }
}

/* The disk offset the word at volume offset off came from. */
static uint64_t origin(struct mdisk *m, const struct vvolume *v, uint64_t off)
{
    uint32_t w;
    vread(m, v, off, &w, 4);
    return (uint64_t)w * 4;
}

static char *json(const struct vlayout *lay) { return rep_to_json(lay->facts); }

static bool has_problem(const struct vlayout *lay, const char *needle)
{
    for (size_t i = 0; i < lay->nproblems; i++)
        if (strstr(lay->problems[i], needle))
            return true;
    return false;
}

static void dump_problems(const struct vlayout *lay)
{
    for (size_t i = 0; i < lay->nproblems; i++)
        fprintf(stderr, "  problem: %s\n", lay->problems[i]);
}

#define ck_json_has(lay, s)                                                       \
    do {                                                                          \
        char *j_ = json(lay);                                                     \
        if (!strstr(j_, s))                                                       \
            fprintf(stderr, "%s\n", j_);                                          \
        ck_assert_msg(strstr(j_, s) != NULL, "facts lack: %s", s);                \
        free(j_);                                                                 \
    } while (0)

/* ---- MBR ---------------------------------------------------------------- */

static void mbr_entry(uint8_t *sec, int slot, uint8_t boot, uint8_t type, uint32_t start,
                      uint32_t count)
{
    uint8_t *e = sec + 0x1be + 16 * slot;
    e[0] = boot;
    e[4] = type;
    unit_le(e + 8, start, 4);
    unit_le(e + 12, count, 4);
    sec[510] = 0x55, sec[511] = 0xaa;
}

/* An EBR at sector ebr: one logical (rel_start, count relative to the EBR)
 * and a link (next relative to the extended partition's start, 0: none). */
static void ebr(struct mdisk *m, uint64_t ebr, uint32_t rel_start, uint32_t count,
                uint32_t next_rel, uint32_t next_count)
{
    uint8_t *s = m->b + ebr * 512;
    memset(s + 0x1be, 0, 64);
    if (count)
        mbr_entry(s, 0, 0, 0x83, rel_start, count);
    if (next_rel)
        mbr_entry(s, 1, 0, 0x05, next_rel, next_count);
    s[510] = 0x55, s[511] = 0xaa;
}

START_TEST(mbr_primaries_and_logicals)
{
    struct mdisk *m = mdisk_new(64 * MiB);
    unit_le(m->b + 0x1b8, 0xdeadbeef, 4);
    mbr_entry(m->b, 0, 0x80, 0x83, 2048, 20480);      /* p1: 1 MiB, 10 MiB */
    mbr_entry(m->b, 1, 0, 0x05, 22528, 40960);        /* p2: extended, 20 MiB */
    mbr_entry(m->b, 3, 0, 0x82, 100000, 20000);       /* p4 (slot 3 empty) */
    ebr(m, 22528, 2048, 8192, 10240, 12288);          /* p5 */
    ebr(m, 22528 + 10240, 2048, 4096, 0, 0);          /* p6 */
    struct vlayout *lay = scan(m);
    dump_problems(lay);
    ck_assert_uint_eq(lay->nproblems, 0);
    ck_assert_ptr_nonnull(vlayout_find(lay, "p1"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "p2"));
    ck_assert_ptr_null(vlayout_find(lay, "p3"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "p4"));
    const struct vvolume *p5 = vlayout_find(lay, "p5"), *p6 = vlayout_find(lay, "p6");
    ck_assert_ptr_nonnull(p5);
    ck_assert_ptr_nonnull(p6);
    ck_assert_uint_eq(p5->size, 8192 * 512);
    ck_assert_uint_eq(p5->segs[0].area[0], (22528 + 2048) * 512ull);
    ck_assert_uint_eq(p6->segs[0].area[0], (22528 + 10240 + 2048) * 512ull);
    ck_assert_uint_eq(p6->size, 4096 * 512);
    ck_json_has(lay, "\"partition_table\": \"mbr\"");
    ck_json_has(lay, "\"disk_id\": \"0xdeadbeef\"");
    ck_json_has(lay, "\"start\": 1048576");
    ck_json_has(lay, "\"end\": 11534335");
    ck_json_has(lay, "\"size_sectors\": 20480");
    ck_json_has(lay, "\"type\": \"0x83\"");
    ck_json_has(lay, "\"type_name\": \"Linux swap / Solaris\"");
    ck_json_has(lay, "\"bootable\": true");
    ck_json_has(lay, "\"kind\": \"logical\"");
    char *t = rep_to_text(lay->facts);
    ck_assert_ptr_nonnull(strstr(t, "partition table: mbr"));
    free(t);
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

START_TEST(mbr_ebr_loop)
{
    struct mdisk *m = mdisk_new(16 * MiB);
    mbr_entry(m->b, 0, 0, 0x0f, 2048, 20480);
    ebr(m, 2048, 63, 100, 1000, 200);
    ebr(m, 3048, 63, 100, 0 + 1, 200);  /* links back near the start... */
    ebr(m, 2049, 63, 50, 1000, 200);    /* ...whose link returns to 3048 */
    struct vlayout *lay = scan(m);
    ck_assert(has_problem(lay, "loops"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "p5"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "p6"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "p7"));
    ck_assert_ptr_null(vlayout_find(lay, "p8"));
    vlayout_free(lay);
    /* A chain that points at itself. */
    ebr(m, 2048, 63, 100, 0 + 0, 0);
    mbr_entry(m->b + 2048 * 512, 1, 0, 0x05, 0, 200);
    unit_le(m->b + 2048 * 512 + 0x1be + 16 + 8, 0, 4);
    lay = scan(m);
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

START_TEST(mbr_ebr_deep_chain)
{
    /* 10,000 EBRs, each with one logical partition of 1 sector. */
    struct mdisk *m = mdisk_new(16 * MiB);
    mbr_entry(m->b, 0, 0, 0x05, 2048, 30000);
    for (uint32_t i = 0; i < 10000; i++) {
        uint64_t at = 2048 + 2ull * i;
        ebr(m, at, 1, 1, i + 1 < 10000 ? 2 * (i + 1) : 0, 2);
    }
    struct vlayout *lay = scan(m);
    ck_assert(has_problem(lay, "more than 256 logical"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "p260"));
    ck_assert_ptr_null(vlayout_find(lay, "p261"));
    ck_assert_uint_lt(m->reads, 3000);
    vlayout_free(lay);
    /* Links only, no logical partitions: the walk stops at 1024 records. */
    for (uint32_t i = 0; i < 10000; i++)
        ebr(m, 2048 + 2ull * i, 0, 0, i + 1 < 10000 ? 2 * (i + 1) : 0, 2);
    lay = scan(m);
    ck_assert(has_problem(lay, "more than 1024 extended boot records"));
    ck_assert_ptr_null(vlayout_find(lay, "p5"));
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

START_TEST(mbr_past_end_and_overlaps)
{
    struct mdisk *m = mdisk_new(8 * MiB);
    mbr_entry(m->b, 0, 0, 0x83, 2048, 4096);          /* fine */
    mbr_entry(m->b, 1, 0, 0x83, 4096, 4096);          /* overlaps p1 */
    mbr_entry(m->b, 2, 0, 0x83, 12288, 8192);         /* runs past the end: clipped */
    mbr_entry(m->b, 3, 0, 0x83, 40000, 100);          /* starts past the end: dropped */
    struct vlayout *lay = scan(m);
    ck_assert(has_problem(lay, "partitions p1 and p2 overlap"));
    ck_assert(has_problem(lay, "partition p3 ends"));
    ck_assert(has_problem(lay, "partition p4 starts at byte"));
    const struct vvolume *p3 = vlayout_find(lay, "p3");
    ck_assert_ptr_nonnull(p3);
    ck_assert_uint_eq(p3->size, 8 * MiB - 12288 * 512);
    ck_assert_ptr_null(vlayout_find(lay, "p4"));
    ck_json_has(lay, "\"beyond_end\": true");
    ck_json_has(lay, "\"path\": null");
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

START_TEST(small_and_empty_disks)
{
    for (uint64_t size = 0; size <= 5000; size += 1000) {
        struct mdisk *m = mdisk_new(size ? size : 1);
        m->vd.size = size;
        if (size >= 512)
            mbr_entry(m->b, 0, 0, 0x83, 1, 100);
        struct vlayout *lay = scan(m);
        ck_assert_ptr_nonnull(lay->facts);
        vlayout_free(lay);
        mdisk_free(m);
    }
}
END_TEST

/* ---- GPT ---------------------------------------------------------------- */

static void guid_parse(const char *s, uint8_t g[16])
{
    unsigned v[16];
    ck_assert_int_eq(sscanf(s, "%2x%2x%2x%2x-%2x%2x-%2x%2x-%2x%2x-%2x%2x%2x%2x%2x%2x", &v[3],
                            &v[2], &v[1], &v[0], &v[5], &v[4], &v[7], &v[6], &v[8], &v[9],
                            &v[10], &v[11], &v[12], &v[13], &v[14], &v[15]),
                     16);
    for (int i = 0; i < 16; i++)
        g[i] = (uint8_t)v[i];
}

struct gent {
    uint32_t index;
    const char *type, *uniq;
    uint64_t first, last, attrs;
    const uint16_t *name;     /* UTF-16 units, 0-terminated */
};

#define LINUX_FS "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
#define LINUX_LVM "E6D6D379-F507-44C2-A23C-238F2A3DF928"
#define EFI_SYS "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

/* Writes a protective MBR, the primary and backup headers and arrays. */
static void gpt_write(struct mdisk *m, uint32_t ss, const struct gent *e, size_t ne,
                      uint32_t nentries, uint32_t esize)
{
    uint64_t last = m->size / ss - 1;
    uint64_t alen = (uint64_t)nentries * esize, albas = (alen + ss - 1) / ss;
    mbr_entry(m->b, 0, 0, 0xee, 1, (uint32_t)VMFS_MIN(last, 0xffffffffu));
    uint8_t *arr = calloc(1, albas * ss);
    for (size_t i = 0; i < ne; i++) {
        uint8_t *p = arr + (size_t)e[i].index * esize;
        guid_parse(e[i].type, p);
        guid_parse(e[i].uniq, p + 16);
        unit_le(p + 32, e[i].first, 8);
        unit_le(p + 40, e[i].last, 8);
        unit_le(p + 48, e[i].attrs, 8);
        for (int k = 0; e[i].name && e[i].name[k] && k < 36; k++)
            unit_le(p + 56 + 2 * k, e[i].name[k], 2);
    }
    uint32_t acrc = gcrc(arr, alen);
    for (int copy = 0; copy < 2; copy++) {
        uint64_t my = copy ? last : 1, alt = copy ? 1 : last;
        uint64_t elba = copy ? last - albas : 2;
        uint8_t *h = m->b + my * ss;
        memset(h, 0, ss);
        memcpy(h, "EFI PART", 8);
        unit_le(h + 8, 0x00010000, 4);
        unit_le(h + 12, 92, 4);
        unit_le(h + 24, my, 8);
        unit_le(h + 32, alt, 8);
        unit_le(h + 40, 2 + albas, 8);
        unit_le(h + 48, last - 1 - albas, 8);
        guid_parse("11223344-5566-7788-99AA-BBCCDDEEFF00", h + 56);
        unit_le(h + 72, elba, 8);
        unit_le(h + 80, nentries, 4);
        unit_le(h + 84, esize, 4);
        unit_le(h + 88, acrc, 4);
        unit_le(h + 16, gcrc(h, 92), 4);
        memcpy(m->b + elba * ss, arr, albas * ss);
    }
    free(arr);
}

static const uint16_t name_root[] = {'r', 'o', 'o', 't', ' ', 0xe9, 0xd83d, 0xde00, 0};
static const uint16_t name_efi[] = {'E', 'F', 'I', 0};

static void gpt_basic(struct mdisk *m, uint32_t ss)
{
    uint64_t mib = MiB / ss;
    struct gent e[] = {
        {0, EFI_SYS, "AAAAAAAA-0000-0000-0000-000000000001", mib, 3 * mib - 1, 1, name_efi},
        {2, LINUX_FS, "AAAAAAAA-0000-0000-0000-000000000003", 3 * mib, 8 * mib - 1,
         (1ull << 2) | (1ull << 60), name_root},
        {3, LINUX_LVM, "AAAAAAAA-0000-0000-0000-000000000004", 8 * mib, 12 * mib - 1, 0, NULL},
    };
    gpt_write(m, ss, e, 3, 128, 128);
}

static void check_gpt_basic(struct vlayout *lay, uint32_t ss)
{
    dump_problems(lay);
    const struct vvolume *p1 = vlayout_find(lay, "p1"), *p3 = vlayout_find(lay, "p3");
    ck_assert_ptr_nonnull(p1);
    ck_assert_ptr_null(vlayout_find(lay, "p2"));
    ck_assert_ptr_nonnull(p3);
    ck_assert_ptr_nonnull(vlayout_find(lay, "p4"));
    ck_assert_uint_eq(p1->segs[0].area[0], MiB);
    ck_assert_uint_eq(p1->size, 2 * MiB);
    ck_assert_uint_eq(p3->segs[0].area[0], 3 * MiB);
    ck_assert_uint_eq(p3->size, 5 * MiB);
    ck_json_has(lay, "\"partition_table\": \"gpt\"");
    char buf[64];
    snprintf(buf, sizeof buf, "\"sector_size\": %u", ss);
    ck_json_has(lay, buf);
    ck_json_has(lay, "\"disk_guid\": \"11223344-5566-7788-99AA-BBCCDDEEFF00\"");
    ck_json_has(lay, "\"type_name\": \"EFI System\"");
    ck_json_has(lay, "\"type_name\": \"Linux filesystem\"");
    ck_json_has(lay, "\"type_name\": \"Linux LVM\"");
    ck_json_has(lay, "\"name\": \"root \xc3\xa9\xf0\x9f\x98\x80\"");
    ck_json_has(lay, "\"guid\": \"AAAAAAAA-0000-0000-0000-000000000003\"");
    ck_json_has(lay, "\"attributes\": \"0x1000000000000004\"");
    ck_json_has(lay, "\"LegacyBIOSBootable\"");
    ck_json_has(lay, "\"GUID:60\"");
    ck_json_has(lay, "\"start\": 3145728");
    ck_json_has(lay, "\"start_sector\": 6144");
}

START_TEST(gpt_512_and_4k)
{
    static const uint32_t sizes[] = {512, 4096};
    for (int i = 0; i < 2; i++) {
        struct mdisk *m = mdisk_new(16 * MiB);
        gpt_basic(m, sizes[i]);
        struct vlayout *lay = scan(m);
        ck_assert_uint_eq(lay->nproblems, 0);
        check_gpt_basic(lay, sizes[i]);
        ck_json_has(lay, "\"gpt_header\": \"primary\"");
        ck_json_has(lay, "\"hybrid_mbr\": false");
        vlayout_free(lay);
        mdisk_free(m);
    }
}
END_TEST

START_TEST(gpt_backup_used)
{
    static const uint32_t sizes[] = {512, 4096};
    for (int i = 0; i < 2; i++) {
        uint32_t ss = sizes[i];
        struct mdisk *m = mdisk_new(16 * MiB);
        /* Damaged primary header. */
        gpt_basic(m, ss);
        m->b[ss + 40] ^= 0xff;
        struct vlayout *lay = scan(m);
        ck_assert(has_problem(lay, "header checksum mismatch"));
        ck_assert(has_problem(lay, "using the backup"));
        check_gpt_basic(lay, ss);
        ck_json_has(lay, "\"gpt_header\": \"backup\"");
        vlayout_free(lay);
        /* Wiped primary header. */
        gpt_basic(m, ss);
        memset(m->b + ss, 0, ss);
        lay = scan(m);
        ck_assert(has_problem(lay, "missing"));
        check_gpt_basic(lay, ss);
        vlayout_free(lay);
        /* Damaged primary entries. */
        gpt_basic(m, ss);
        m->b[2 * ss + 130] ^= 1;
        lay = scan(m);
        ck_assert(has_problem(lay, "entry array checksum mismatch"));
        check_gpt_basic(lay, ss);
        vlayout_free(lay);
        /* Damaged backup only: the primary is used, the backup reported. */
        gpt_basic(m, ss);
        m->b[m->size - ss + 20] ^= 1;
        lay = scan(m);
        ck_assert(has_problem(lay, "backup header"));
        check_gpt_basic(lay, ss);
        ck_json_has(lay, "\"gpt_header\": \"primary\"");
        vlayout_free(lay);
        mdisk_free(m);
    }
}
END_TEST

/* A GPT whose disk grew: the backup is where alternate_lba says, not at
 * the last LBA. */
START_TEST(gpt_backup_at_alternate_lba)
{
    struct mdisk *m = mdisk_new(16 * MiB);
    gpt_basic(m, 512);
    struct mdisk *big = mdisk_new(20 * MiB);
    memcpy(big->b, m->b, m->size);
    big->b[2 * 512 + 130] ^= 1; /* primary entries damaged */
    struct vlayout *lay = scan(big);
    ck_assert(has_problem(lay, "using the backup at LBA 32767"));
    check_gpt_basic(lay, 512);
    vlayout_free(lay);
    mdisk_free(big);
    mdisk_free(m);
}
END_TEST

static void rewrite_header(struct mdisk *m, uint32_t ss, uint64_t lba, uint32_t nentries,
                           uint32_t esize)
{
    uint8_t *h = m->b + lba * ss;
    unit_le(h + 80, nentries, 4);
    unit_le(h + 84, esize, 4);
    unit_le(h + 16, 0, 4);
    unit_le(h + 16, gcrc(h, 92), 4);
}

START_TEST(gpt_absurd_geometry)
{
    struct mdisk *m = mdisk_new(16 * MiB);
    uint64_t last = m->size / 512 - 1;
    static const uint32_t bad[][2] = {
        {0x10000000, 128}, {0xffffffff, 0xffffffff}, {128, 100}, {128, 8192}, {9000, 128},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(bad); i++) {
        /* Primary absurd, backup fine. */
        gpt_basic(m, 512);
        rewrite_header(m, 512, 1, bad[i][0], bad[i][1]);
        struct vlayout *lay = scan(m);
        ck_assert(has_problem(lay, "absurd"));
        check_gpt_basic(lay, 512);
        vlayout_free(lay);
        /* Both absurd: no partitions, never a crash. */
        rewrite_header(m, 512, last, bad[i][0], bad[i][1]);
        lay = scan(m);
        ck_assert(has_problem(lay, "no valid backup"));
        ck_assert_uint_eq(lay->nvols, 0);
        ck_json_has(lay, "\"partition_table\": \"gpt\"");
        vlayout_free(lay);
    }
    /* Entries pointing past the end of the disk, and partitions past it. */
    struct gent e[] = {
        {0, LINUX_FS, "AAAAAAAA-0000-0000-0000-000000000001", 2048, 100000, 0, NULL},
        {1, LINUX_FS, "AAAAAAAA-0000-0000-0000-000000000002", 200000, 300000, 0, NULL},
        {2, LINUX_FS, "AAAAAAAA-0000-0000-0000-000000000003", 5000, 4000, 0, NULL},
        {3, LINUX_FS, "AAAAAAAA-0000-0000-0000-000000000004", 1ull << 62, ~0ull, 0, NULL},
    };
    memset(m->b, 0, m->size);
    gpt_write(m, 512, e, 4, 128, 128);
    struct vlayout *lay = scan(m);
    ck_assert(has_problem(lay, "partition p1 ends"));
    ck_assert(has_problem(lay, "partition p2 starts"));
    ck_assert(has_problem(lay, "entry 3 has an impossible range"));
    ck_assert(has_problem(lay, "entry 4 has an impossible range"));
    ck_assert(has_problem(lay, "outside the usable area"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "p1"));
    ck_assert_ptr_null(vlayout_find(lay, "p2"));
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

START_TEST(gpt_hybrid_and_unprotected)
{
    struct mdisk *m = mdisk_new(16 * MiB);
    gpt_basic(m, 512);
    /* Hybrid: the MBR also lists p3's area as 0x83; the GPT wins. */
    mbr_entry(m->b, 1, 0x80, 0x83, 6144, 10240);
    struct vlayout *lay = scan(m);
    ck_assert_uint_eq(lay->nproblems, 0);
    check_gpt_basic(lay, 512);
    ck_json_has(lay, "\"hybrid_mbr\": true");
    vlayout_free(lay);
    /* No protective entry but a valid MBR: Linux reads the MBR. */
    memset(m->b + 0x1be, 0, 16);
    lay = scan(m);
    ck_assert(has_problem(lay, "no protective"));
    ck_json_has(lay, "\"partition_table\": \"mbr\"");
    ck_assert_ptr_nonnull(vlayout_find(lay, "p2"));
    vlayout_free(lay);
    /* No MBR at all: the GPT is used, reported. */
    memset(m->b, 0, 512);
    lay = scan(m);
    ck_assert(has_problem(lay, "not protective"));
    check_gpt_basic(lay, 512);
    vlayout_free(lay);
    /* A protective MBR and no GPT anywhere. */
    memset(m->b, 0, m->size);
    mbr_entry(m->b, 0, 0, 0xee, 1, 30000);
    lay = scan(m);
    ck_assert(has_problem(lay, "no valid header"));
    ck_assert_uint_eq(lay->nvols, 0);
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

/* ---- the signature table ------------------------------------------------ */

static void put_ext4(uint8_t *v)
{
    uint8_t *sb = v + 1024;
    unit_le(sb + 0x38, 0xEF53, 2);
    unit_le(sb + 0x5c, 0x4, 4);
    unit_le(sb + 0x60, 0x2 | 0x40, 4);
    for (int i = 0; i < 16; i++)
        sb[0x68 + i] = (uint8_t)(0x10 + i);
    memcpy(sb + 0x78, "rootfs", 6);
}

static void put_fat32(uint8_t *v)
{
    unit_le(v + 11, 512, 2);
    v[13] = 8;
    unit_le(v + 14, 32, 2);
    v[16] = 2;
    v[66] = 0x29;
    unit_le(v + 67, 0x1234abcd, 4);
    memcpy(v + 71, "EFIBOOT    ", 11);
    memcpy(v + 82, "FAT32   ", 8);
    v[510] = 0x55, v[511] = 0xaa;
}

START_TEST(content_signatures)
{
    struct mdisk *m = mdisk_new(32 * MiB);
    static const struct { uint32_t start; } parts[] = {{2048}, {8192}, {16384}, {24576}};
    for (int i = 0; i < 4; i++)
        mbr_entry(m->b, i, 0, 0x83, parts[i].start, 6144);
    put_ext4(m->b + 2048 * 512);
    uint8_t *x = m->b + 8192 * 512;
    memcpy(x, "XFSB", 4);
    memcpy(x + 108, "data", 4);
    x[32] = 0xab;
    put_fat32(m->b + 16384 * 512);
    uint8_t *sw = m->b + 24576 * 512;
    memcpy(sw + 4086, "SWAPSPACE2", 10);
    memcpy(sw + 1052, "swappy", 6);
    struct vlayout *lay = scan(m);
    ck_json_has(lay, "\"content\": \"ext4\"");
    ck_json_has(lay, "\"label\": \"rootfs\"");
    ck_json_has(lay, "\"uuid\": \"10111213-1415-1617-1819-1a1b1c1d1e1f\"");
    ck_json_has(lay, "\"content\": \"xfs\"");
    ck_json_has(lay, "\"label\": \"data\"");
    ck_json_has(lay, "\"content\": \"vfat\"");
    ck_json_has(lay, "\"label\": \"EFIBOOT\"");
    ck_json_has(lay, "\"uuid\": \"1234-ABCD\"");
    ck_json_has(lay, "\"content\": \"swap\"");
    ck_json_has(lay, "\"label\": \"swappy\"");
    vlayout_free(lay);
    /* More kinds, whole disk (no partition table). */
    static const struct { const char *type; uint32_t off; const char *magic; size_t len; } sig[] = {
        {"btrfs", 65600, "_BHRfS_M", 8},   {"ntfs", 3, "NTFS    ", 8},
        {"LUKS", 0, "LUKS\xba\xbe", 6},    {"exfat", 3, "EXFAT   ", 8},
        {"iso9660", 32769, "CD001", 5},    {"squashfs", 0, "hsqs", 4},
    };
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(sig); i++) {
        memset(m->b, 0, 128 * 1024);
        memcpy(m->b + sig[i].off, sig[i].magic, sig[i].len);
        lay = scan(m);
        char want[64];
        snprintf(want, sizeof want, "\"disk_content\": \"%s\"", sig[i].type);
        ck_json_has(lay, "\"partition_table\": \"none\"");
        ck_json_has(lay, want);
        vlayout_free(lay);
    }
    /* A FAT file system on the whole disk: 0x55AA but not an MBR. */
    memset(m->b, 0, 128 * 1024);
    put_fat32(m->b);
    lay = scan(m);
    ck_json_has(lay, "\"partition_table\": \"none\"");
    ck_json_has(lay, "\"disk_content\": \"vfat\"");
    vlayout_free(lay);
    memset(m->b, 0, 128 * 1024);
    put_ext4(m->b);
    lay = scan(m);
    ck_json_has(lay, "\"disk_content\": \"ext4\"");
    ck_json_has(lay, "\"disk_label\": \"rootfs\"");
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

/* ---- LVM ---------------------------------------------------------------- */

#define EXT_SECTORS 128                /* 64 KiB extents */
#define EXT (EXT_SECTORS * 512ull)
#define PE_START MiB
#define MDA_OFF 4096ull
#define MDA_SIZE (MiB - 4096)
#define UUID0 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA0"
#define UUID1 "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB1"

static const char mda_magic_t[16] = " LVM2 x[5A%r0N*>";

/* A PV label in sector 1 of the PV at pv (byte offset on the disk). */
static void lvm_label(struct mdisk *m, uint64_t pv, const char *uuid, uint64_t devsize)
{
    uint8_t *l = m->b + pv + 512;
    memset(l, 0, 512);
    memcpy(l, "LABELONE", 8);
    unit_le(l + 8, 1, 8);
    unit_le(l + 20, 32, 4);
    memcpy(l + 24, "LVM2 001", 8);
    uint8_t *ph = l + 32;
    memcpy(ph, uuid, 32);
    unit_le(ph + 32, devsize, 8);
    unit_le(ph + 40, PE_START, 8);
    unit_le(ph + 72, MDA_OFF, 8);
    unit_le(ph + 80, MDA_SIZE, 8);
    unit_le(l + 16, lcrc(l + 20, 512 - 20), 4);
}

/* The metadata area of the PV at pv: text at rl_off (it wraps past the
 * end of the area to just after the header). */
static void lvm_mda(struct mdisk *m, uint64_t pv, const char *text, uint64_t rl_off,
                    bool bad_crc)
{
    uint8_t *a = m->b + pv + MDA_OFF;
    size_t len = strlen(text) + 1;
    memset(a, 0, 512);
    memcpy(a + 4, mda_magic_t, 16);
    unit_le(a + 20, 1, 4);
    unit_le(a + 24, MDA_OFF, 8);
    unit_le(a + 32, MDA_SIZE, 8);
    size_t first = (size_t)VMFS_MIN(len, MDA_SIZE - rl_off);
    memcpy(a + rl_off, text, first);
    memcpy(a + 512, text + first, len - first);
    unit_le(a + 40, rl_off, 8);
    unit_le(a + 48, len, 8);
    unit_le(a + 56, lcrc(text, len) ^ (bad_crc ? 1 : 0), 4);
    unit_le(a, lcrc(a + 4, 512 - 4), 4);
}

#define VG_HEAD \
    "# Generated by a test\n\n" \
    "vg {\n" \
    "id = \"vgvgvg-vgvg-vgvg-vgvg-vgvg-vgvg-vgvgvg\"\n" \
    "seqno = %d\n" \
    "format = \"lvm2\" # informational\n" \
    "status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\n" \
    "flags = []\n" \
    "extent_size = 128\n" \
    "max_lv = 0\n" \
    "max_pv = 0\n" \
    "metadata_copies = 0\n" \
    "\n" \
    "physical_volumes {\n" \
    "\n" \
    "pv0 {\n" \
    "id = \"AAAAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAAA0\"\n" \
    "device = \"/dev/sda1\"\t# Hint only\n" \
    "status = [\"ALLOCATABLE\"]\n" \
    "flags = []\n" \
    "dev_size = 12288\n" \
    "pe_start = 2048\n" \
    "pe_count = 80\n" \
    "}\n" \
    "\n" \
    "pv1 {\n" \
    "id = \"BBBBBB-BBBB-BBBB-BBBB-BBBB-BBBB-BBBBB1\"\n" \
    "device = \"/dev/sda2\"\n" \
    "status = [\"ALLOCATABLE\"]\n" \
    "flags = []\n" \
    "dev_size = 12288\n" \
    "pe_start = 2048\n" \
    "pe_count = 80\n" \
    "}\n" \
    "}\n" \
    "\n" \
    "logical_volumes {\n"

static const char *vg_tail =
    "}\n"
    "}\n"
    "# Generated by a test\n\n"
    "contents = \"Text Format Volume Group\"\n"
    "version = 1\n\n"
    "description = \"Created *after* executing 'lvcreate \\\"x\\\"'\"\n\n"
    "creation_host = \"test\"\t# Linux test\n"
    "creation_time = 1700000000\t# Tue Nov 14 2023\n\n";

/* One LV with plain segments: segs is "type:count:pv:start[:pv:start…]"
 * entries separated by ';' (striped ones give stripe size after type). */
static void lv_text(char **buf, size_t *len, const char *name, bool visible, const char *body)
{
    FILE *f = open_memstream(buf, len);
    fprintf(f, "\n%s {\nid = \"lvlvlv-lvlv-lvlv-lvlv-lvlv-lvlv-%s\"\n", name, name);
    fprintf(f, "status = [\"READ\", \"WRITE\"%s]\nflags = []\n", visible ? ", \"VISIBLE\"" : "");
    fprintf(f, "creation_time = 1700000000\ncreation_host = \"test\"\n%s}\n", body);
    fclose(f);
}

static char *seg_linear(int n, uint64_t start, uint64_t count, const char *pv, uint64_t pe)
{
    return xasprintf("segment%d {\nstart_extent = %lu\nextent_count = %lu\n\ntype = \"striped\"\n"
                     "stripe_count = 1\t# linear\n\nstripes = [\n\"%s\", %lu\n]\n}\n",
                     n, (unsigned long)start, (unsigned long)count, pv, (unsigned long)pe);
}

/* Builds metadata text: head, the LVs (NULL-terminated list of
 * name, visible ("1"/"0"), body), tail. */
static char *vg_text(int seqno, const char *const *lvs)
{
    char *out;
    size_t len;
    FILE *f = open_memstream(&out, &len);
    fprintf(f, VG_HEAD, seqno);
    for (size_t i = 0; lvs[i]; i += 3) {
        char *b;
        size_t bl;
        lv_text(&b, &bl, lvs[i], lvs[i + 1][0] == '1', lvs[i + 2]);
        fputs(b, f);
        free(b);
    }
    fputs(vg_tail, f);
    fclose(f);
    return out;
}

/* Two PVs: p1 (pv0) at 1 MiB and p2 (pv1) at 7 MiB, 6 MiB each. */
#define P1 (1 * MiB)
#define P2 (7 * MiB)

static struct mdisk *two_pv_disk(void)
{
    struct mdisk *m = mdisk_new(16 * MiB);
    mdisk_pattern(m);
    memset(m->b, 0, 512);
    mbr_entry(m->b, 0, 0, 0x8e, P1 / 512, 12288);
    mbr_entry(m->b, 1, 0, 0x8e, P2 / 512, 12288);
    memset(m->b + P1, 0, 8192);
    memset(m->b + P2, 0, 8192);
    lvm_label(m, P1, UUID0, 6 * MiB);
    lvm_label(m, P2, UUID1, 6 * MiB);
    return m;
}

struct lvset {
    char *lin1, *lin2, *rm0, *ri0, *rm1, *ri1, *t_data, *t_meta, *cow, *mi0, *mi1;
    char *lin, *stripe, *raid, *pool, *thin, *snap, *mirror, *mlog;
};

static void lvset_make(struct lvset *s)
{
    memset(s, 0, sizeof *s);
    s->lin1 = seg_linear(1, 0, 10, "pv0", 0);
    s->lin2 = seg_linear(2, 10, 5, "pv1", 0);
    s->lin = xasprintf("segment_count = 2\n\n%s%s", s->lin1, s->lin2);
    s->stripe = xstrdup("segment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 20\n"
                        "type = \"striped\"\nstripe_count = 2\nstripe_size = 16\n"
                        "stripes = [\n\"pv0\", 10,\n\"pv1\", 5\n]\n}\n");
    s->raid = xstrdup("segment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 8\n"
                      "type = \"raid1\"\ndevice_count = 2\nregion_size = 1024\n"
                      "raids = [\n\"r1_rmeta_0\", \"r1_rimage_0\",\n\"r1_rmeta_1\", "
                      "\"r1_rimage_1\"\n]\n}\n");
    s->rm0 = seg_linear(1, 0, 1, "pv0", 30);
    s->ri0 = seg_linear(1, 0, 8, "pv0", 31);
    s->rm1 = seg_linear(1, 0, 1, "pv1", 30);
    s->ri1 = seg_linear(1, 0, 8, "pv1", 31);
    s->pool = xstrdup("segment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 4\n"
                      "type = \"thin-pool\"\nmetadata = \"pool_tmeta\"\npool = \"pool_tdata\"\n"
                      "transaction_id = 1\nchunk_size = 128\ndiscards = \"passdown\"\n"
                      "zero_new_blocks = 1\n}\n");
    s->thin = xstrdup("segment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 16\n"
                      "type = \"thin\"\nthin_pool = \"pool\"\ntransaction_id = 0\n"
                      "device_id = 1\n}\n");
    s->t_data = seg_linear(1, 0, 4, "pv0", 50);
    s->t_meta = seg_linear(1, 0, 1, "pv0", 54);
    s->snap = xstrdup("segment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 2\n"
                      "type = \"snapshot\"\nchunk_size = 8\norigin = \"lin\"\n"
                      "cow_store = \"snapcow\"\n}\n");
    s->cow = seg_linear(1, 0, 2, "pv1", 60);
    s->mirror = xstrdup("segment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 4\n"
                        "type = \"mirror\"\nmirror_count = 2\nmirror_log = \"mir_mlog\"\n"
                        "region_size = 1024\nmirrors = [\n\"mir_mimage_0\", 0,\n"
                        "\"mir_mimage_1\", 0\n]\n}\n");
    s->mi0 = seg_linear(1, 0, 4, "pv1", 40);
    s->mi1 = seg_linear(1, 0, 4, "pv0", 40);
    s->mlog = seg_linear(1, 0, 1, "pv0", 45);
}

static void lvset_free(struct lvset *s)
{
    char **p = (char **)s;
    for (size_t i = 0; i < sizeof *s / sizeof(char *); i++)
        free(p[i]);
}

START_TEST(lvm_two_pvs_all_kinds)
{
    struct lvset s;
    lvset_make(&s);
    const char *lvs[] = {
        "lin", "1", s.lin, "str", "1", s.stripe,
        "r1", "1", s.raid, "r1_rmeta_0", "0", s.rm0, "r1_rimage_0", "0", s.ri0,
        "r1_rmeta_1", "0", s.rm1, "r1_rimage_1", "0", s.ri1,
        "pool", "1", s.pool, "pool_tdata", "0", s.t_data, "pool_tmeta", "0", s.t_meta,
        "thin", "1", s.thin, "snapcow", "1", s.cow, "snapshot0", "0", s.snap,
        "mir", "1", s.mirror, "mir_mimage_0", "0", s.mi0, "mir_mimage_1", "0", s.mi1,
        "mir_mlog", "0", s.mlog, NULL,
    };
    char *text = vg_text(7, lvs);
    struct mdisk *m = two_pv_disk();
    lvm_mda(m, P1, text, 512, false);
    lvm_mda(m, P2, text, 4096, false);
    struct vlayout *lay = scan(m);
    dump_problems(lay);
    ck_assert_uint_eq(lay->nproblems, 0);
    /* Linear, two segments on two PVs. */
    const struct vvolume *v = vlayout_find(lay, "lvm/vg/lin");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(v->size, 15 * EXT);
    ck_assert_uint_eq(v->nsegs, 2);
    ck_assert_uint_eq(origin(m, v, 0), P1 + PE_START);
    ck_assert_uint_eq(origin(m, v, 10 * EXT - 4), P1 + PE_START + 10 * EXT - 4);
    ck_assert_uint_eq(origin(m, v, 10 * EXT), P2 + PE_START);
    ck_assert_uint_eq(origin(m, v, 15 * EXT - 4), P2 + PE_START + 5 * EXT - 4);
    /* Striped over two partitions, 8 KiB chunks. */
    v = vlayout_find(lay, "lvm/vg/str");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(v->size, 20 * EXT);
    for (uint64_t off = 0; off < v->size; off += 4096 + 4) {
        uint64_t chunk = off / 8192, stripe = chunk % 2, row = chunk / 2;
        uint64_t base = stripe ? P2 + PE_START + 5 * EXT : P1 + PE_START + 10 * EXT;
        ck_assert_uint_eq(origin(m, v, off & ~3ull), base + row * 8192 + (off & ~3ull) % 8192);
    }
    /* raid1: read from rimage_0. */
    v = vlayout_find(lay, "lvm/vg/r1");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(v->size, 8 * EXT);
    ck_assert_uint_eq(origin(m, v, 100), P1 + PE_START + 31 * EXT + 100);
    /* mirror: read from mimage_0 (on pv1). */
    v = vlayout_find(lay, "lvm/vg/mir");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(origin(m, v, 4 * EXT - 4), P2 + PE_START + 44 * EXT - 4);
    /* Not shown: hidden sub-LVs, thin, pool, the snapshot's COW store. */
    static const char *const hidden[] = {"r1_rimage_0", "r1_rmeta_0", "pool", "pool_tdata",
                                         "thin", "snapcow", "snapshot0", "mir_mimage_0",
                                         "mir_mlog"};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(hidden); i++) {
        char p[64];
        snprintf(p, sizeof p, "lvm/vg/%s", hidden[i]);
        ck_assert_msg(vlayout_find(lay, p) == NULL, "%s shown", p);
    }
    ck_assert_uint_eq(lay->nvols, 2 + 4);
    ck_json_has(lay, "\"name\": \"vg\"");
    ck_json_has(lay, "\"seqno\": 7");
    ck_json_has(lay, "\"extent_size\": 65536");
    ck_json_has(lay, "\"device\": \"p2\"");
    ck_json_has(lay, "\"pe_start\": 1048576");
    ck_json_has(lay, "\"missing\": false");
    ck_json_has(lay, "\"path\": \"lvm/vg/str\"");
    ck_json_has(lay, "\"type\": \"linear\"");
    ck_json_has(lay, "\"type\": \"striped\"");
    ck_json_has(lay, "\"stripe_size\": 8192");
    ck_json_has(lay, "\"disk_offset\": 8716288"); /* p2 + 1 MiB + 5 extents */
    ck_json_has(lay, "\"pv_offset\": 1376256");   /* 1 MiB + 5 extents */
    ck_json_has(lay, "\"used_leg\": \"r1_rimage_0\"");
    ck_json_has(lay, "thin LV");
    ck_json_has(lay, "thin pool");
    ck_json_has(lay, "copy-on-write");
    ck_json_has(lay, "\"content\": \"LVM2 PV\"");
    ck_json_has(lay, "\"uuid\": \"AAAAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAAA0\"");
    char *t = rep_to_text(lay->facts);
    ck_assert_ptr_nonnull(strstr(t, "volume groups:"));
    free(t);
    vlayout_free(lay);

    /* pv0's partition gone: raid1 and mirror read their other legs; the
     * linear LV on both PVs is not shown, with its reason. */
    memset(m->b + 0x1be, 0, 16);
    lay = scan(m);
    ck_assert(has_problem(lay, "1 of its 2 PVs is not on this disk"));
    ck_assert_ptr_null(vlayout_find(lay, "lvm/vg/lin"));
    ck_assert_ptr_null(vlayout_find(lay, "lvm/vg/str"));
    v = vlayout_find(lay, "lvm/vg/r1");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(origin(m, v, 100), P2 + PE_START + 31 * EXT + 100);
    v = vlayout_find(lay, "lvm/vg/mir");
    ck_assert_ptr_nonnull(v);
    ck_json_has(lay, "\"used_leg\": \"r1_rimage_1\"");
    ck_json_has(lay, "\"missing\": true");
    ck_json_has(lay, "is not on this disk");
    vlayout_free(lay);
    mdisk_free(m);
    free(text);
    lvset_free(&s);
}
END_TEST

START_TEST(lvm_whole_disk_and_wrap)
{
    char *seg = seg_linear(1, 0, 16, "pv0", 2);
    char *body = xasprintf("segment_count = 1\n%s", seg);
    const char *lvs[] = {"root", "1", body, NULL};
    char *text = vg_text(3, lvs);
    struct mdisk *m = mdisk_new(8 * MiB);
    mdisk_pattern(m);
    memset(m->b, 0, 8192);
    lvm_label(m, 0, UUID0, m->size);
    /* The text starts 100 bytes before the end of the area and wraps. */
    lvm_mda(m, 0, text, MDA_SIZE - 100, false);
    struct vlayout *lay = scan(m);
    dump_problems(lay);
    ck_assert_uint_eq(lay->nproblems, 1); /* pv1 is not on this disk */
    ck_assert(has_problem(lay, "1 of its 2 PVs is not on this disk"));
    ck_json_has(lay, "\"partition_table\": \"none\"");
    ck_json_has(lay, "\"disk_content\": \"LVM2 PV\"");
    ck_json_has(lay, "\"device\": \"disk\"");
    const struct vvolume *v = vlayout_find(lay, "lvm/vg/root");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(v->size, 16 * EXT);
    ck_assert_uint_eq(origin(m, v, 0), PE_START + 2 * EXT);
    ck_json_has(lay, "\"content\": null");
    vlayout_free(lay);
    /* A PV label inside the LV: named, not followed. */
    uint8_t *in = m->b + PE_START + 2 * EXT + 512;
    memcpy(in, "LABELONE", 8);
    memcpy(in + 24, "LVM2 001", 8);
    lay = scan(m);
    ck_json_has(lay, "\"content\": \"LVM2 PV\"");
    ck_json_has(lay, "\"content_note\": \"not followed");
    ck_assert_uint_eq(lay->nvols, 1);
    vlayout_free(lay);
    mdisk_free(m);
    free(text);
    free(body);
    free(seg);
}
END_TEST

START_TEST(lvm_seqno_and_bad_crc)
{
    char *seg = seg_linear(1, 0, 4, "pv0", 0);
    char *body = xasprintf("segment_count = 1\n%s", seg);
    const char *old_lvs[] = {"a", "1", body, NULL};
    const char *new_lvs[] = {"a", "1", body, "b", "1", body, NULL};
    char *old = vg_text(4, old_lvs), *new = vg_text(5, new_lvs);
    struct mdisk *m = two_pv_disk();
    /* Different seqnos: the newest wins. */
    lvm_mda(m, P1, old, 512, false);
    lvm_mda(m, P2, new, 512, false);
    struct vlayout *lay = scan(m);
    ck_assert(has_problem(lay, "metadata copies disagree"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "lvm/vg/b"));
    ck_json_has(lay, "\"seqno\": 5");
    ck_json_has(lay, "\"metadata_from\": \"p2\"");
    vlayout_free(lay);
    /* The newest has a bad checksum: the older is used. */
    lvm_mda(m, P2, new, 512, true);
    lay = scan(m);
    ck_assert(has_problem(lay, "newest metadata (seqno 5 in p2) has a bad checksum"));
    ck_assert_ptr_nonnull(vlayout_find(lay, "lvm/vg/a"));
    ck_assert_ptr_null(vlayout_find(lay, "lvm/vg/b"));
    ck_json_has(lay, "\"seqno\": 4");
    vlayout_free(lay);
    /* Every copy bad: the VG is listed, unreadable. */
    lvm_mda(m, P1, old, 512, true);
    lay = scan(m);
    ck_assert(has_problem(lay, "every metadata copy has a bad checksum"));
    ck_assert_uint_eq(lay->nvols, 2);
    ck_json_has(lay, "\"readable\": false");
    vlayout_free(lay);
    /* Damaged label and area header. */
    lvm_mda(m, P1, old, 512, false);
    m->b[P2 + 512 + 100] ^= 1;
    m->b[P1 + MDA_OFF + 100] ^= 1;
    lay = scan(m);
    ck_assert(has_problem(lay, "label in sector 1 of p2 has a bad checksum"));
    ck_assert(has_problem(lay, "bad header checksum"));
    ck_assert_uint_eq(lay->nvols, 2);
    vlayout_free(lay);
    mdisk_free(m);
    free(old);
    free(new);
    free(body);
    free(seg);
}
END_TEST

/* Two VGs on one disk, one per partition. */
START_TEST(lvm_two_vgs)
{
    static const char a[] =
        "alpha { id = \"alalal-alal-alal-alal-alal-alal-alalal\" seqno = 2 extent_size = 128\n"
        "physical_volumes { pv0 { id = \"AAAAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAAA0\"\n"
        "pe_start = 2048 pe_count = 80 } }\n"
        "logical_volumes { one { status = [\"READ\", \"VISIBLE\"] segment1 {\n"
        "start_extent = 0 extent_count = 2 type = \"striped\" stripe_count = 1\n"
        "stripes = [\"pv0\", 3] } } } }\ncontents = \"Text Format Volume Group\"\n";
    static const char b[] =
        "beta { id = \"bebebe-bebe-bebe-bebe-bebe-bebe-bebebe\" seqno = 9 extent_size = 256\n"
        "physical_volumes { pv0 { id = \"BBBBBB-BBBB-BBBB-BBBB-BBBB-BBBB-BBBBB1\"\n"
        "pe_count = 40 } }\n" /* no pe_start: the label's data area gives it */
        "logical_volumes { two { status = [\"VISIBLE\"] segment1 {\n"
        "start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 1\n"
        "stripes = [\"pv0\", 1] } } } }\n";
    struct mdisk *m = two_pv_disk();
    lvm_mda(m, P1, a, 512, false);
    lvm_mda(m, P2, b, 512, false);
    struct vlayout *lay = scan(m);
    dump_problems(lay);
    ck_assert_uint_eq(lay->nproblems, 0);
    const struct vvolume *v1 = vlayout_find(lay, "lvm/alpha/one");
    const struct vvolume *v2 = vlayout_find(lay, "lvm/beta/two");
    ck_assert_ptr_nonnull(v1);
    ck_assert_ptr_nonnull(v2);
    ck_assert_uint_eq(v1->size, 2 * EXT);
    ck_assert_uint_eq(v2->size, 2 * EXT);
    ck_assert_uint_eq(origin(m, v1, 0), P1 + PE_START + 3 * EXT);
    ck_assert_uint_eq(origin(m, v2, 0), P2 + PE_START + 2 * EXT);
    ck_json_has(lay, "\"name\": \"alpha\"");
    ck_json_has(lay, "\"name\": \"beta\"");
    vlayout_free(lay);
    mdisk_free(m);
}
END_TEST

START_TEST(lvm_malformed_text)
{
    static const char *const bad[] = {
        "vg { id = \"x\" seqno = 1 extent_size = 128 physical_volumes { pv0 { id = [ } } }",
        "vg { seqno = 1 extent_size = 128 logical_volumes { lv { status = [\"VISIBLE\"] "
        "segment1 { start_extent = 0 extent_count = 99999999999 type = \"striped\" "
        "stripe_count = 1 stripes = [ \"pv0\", 18446744073709551615 ] } } } }",
        "vg { seqno = 1 extent_size = 4294967296000 }",
        "vg { seqno = 1 extent_size = 128 logical_volumes { lv { status = [\"VISIBLE\"] "
        "segment1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 3 "
        "stripe_size = 0 stripes = [ \"pv0\", 0, \"pv9\", 0, \"x\" ] } } } }",
        "vg { seqno = 1 extent_size = 128 logical_volumes { lv { status = [\"VISIBLE\"] "
        "segment1 { start_extent = 5 extent_count = 4 type = \"striped\" stripes = [ \"pv0\", "
        "0 ] } } } }",
        "vg { seqno = \"unterminated",
        "}}}}",
        "vg { seqno = 1 extent_size = 128 a = [[1]] }",
        "vg { seqno = 99999999999999999999999 }",
        "vg { seqno = 1 extent_size = 128 physical_volumes { pv0 { id = \"AAAAAA-AAAA-AAAA-"
        "AAAA-AAAA-AAAA-AAAAA0\" pe_start = 1152921504606846976 } } }",
    };
    struct mdisk *m = mdisk_new(8 * MiB);
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(bad); i++) {
        lvm_label(m, 0, UUID0, m->size);
        lvm_mda(m, 0, bad[i], 512, false);
        struct vlayout *lay = scan(m);
        ck_assert_msg(lay->nproblems > 0 || strstr(bad[i], "logical_volumes"), "case %zu", i);
        ck_assert_uint_eq(lay->nvols, 0);
        vlayout_free(lay);
    }
    /* 300,000 nested sections: refused without recursion. */
    size_t n = 300000;
    char *deep = malloc(n * 3 + 32);
    strcpy(deep, "vg { seqno = 1 ");
    size_t o = strlen(deep);
    for (size_t i = 0; i < n; i++)
        memcpy(deep + o + 2 * i, "a{", 2);
    memset(deep + o + 2 * n, '}', n);
    deep[o + 3 * n] = 0;
    ck_assert_uint_lt(strlen(deep) + 1, MDA_SIZE - 512);
    lvm_mda(m, 0, deep, 512, false);
    struct vlayout *lay = scan(m);
    ck_assert(has_problem(lay, "nested too deeply"));
    vlayout_free(lay);
    free(deep);
    mdisk_free(m);
}
END_TEST

START_TEST(text_parser)
{
    static const char t[] =
        "# comment\nvg {\n  id = \"a\\\"b\\\\c\" # trailing\n  n = -42\n  f = 1.5\n"
        "  arr = [ \"x\", 1, \"y\" ]\n  empty = []\n  sub { k = 7 }\n}\nversion = 1\n";
    struct lt_doc d;
    char *err = NULL;
    ck_assert_int_eq(lt_parse(&d, t, sizeof t - 1, &err), 0);
    const struct lt_node *vg = lt_get(&d, lt_root(&d), "vg");
    ck_assert_ptr_nonnull(vg);
    ck_assert_str_eq(lt_str(&d, vg, "id"), "a\"b\\c");
    ck_assert_int_eq(lt_get(&d, vg, "n")->num, -42);
    ck_assert_int_eq(lt_get(&d, vg, "f")->type, LT_FLOAT);
    ck_assert(lt_has(&d, vg, "arr", "y"));
    ck_assert(!lt_has(&d, vg, "arr", "z"));
    ck_assert_ptr_null(lt_first(&d, lt_get(&d, vg, "empty")));
    uint64_t k;
    ck_assert(lt_u64(&d, lt_get(&d, vg, "sub"), "k", &k));
    ck_assert_uint_eq(k, 7);
    ck_assert(!lt_u64(&d, vg, "n", &k));
    ck_assert(lt_u64(&d, lt_root(&d), "version", &k));
    lt_free(&d);
    static const char *const bad[] = {"a = ", "a = [1,", "a { b = 1", "a = 1x", "= 1", "a b",
                                      "a = [1 2]", "a = \"x"};
    for (size_t i = 0; i < VMFS_ARRAY_SIZE(bad); i++) {
        ck_assert_int_eq(lt_parse(&d, bad[i], strlen(bad[i]), &err), -1);
        ck_assert_ptr_nonnull(strstr(err, "line 1"));
        free(err);
        lt_free(&d);
    }
}
END_TEST

START_TEST(map_striped_volume)
{
    uint64_t area[3] = {1000000, 2000000, 3000000};
    struct vvol_seg segs[2] = {
        {.loff = 0, .len = 4096, .nstripes = 1, .area = area},
        {.loff = 4096, .len = 3 * 4 * 512, .nstripes = 3, .stripe_size = 512, .area = area},
    };
    struct vvolume v = {.kind = VVOL_LV, .path = "x", .size = 4096 + 6144, .segs = segs, .nsegs = 2};
    uint64_t d, n;
    vvol_map(&v, 100, 10000, &d, &n);
    ck_assert_uint_eq(d, 1000100);
    ck_assert_uint_eq(n, 3996);
    vvol_map(&v, 4096 + 512 * 4 + 10, 10000, &d, &n); /* chunk 4: stripe 1, row 1 */
    ck_assert_uint_eq(d, 2000000 + 512 + 10);
    ck_assert_uint_eq(n, 502);
    vvol_map(&v, 4096 + 512 * 11 + 511, 10000, &d, &n); /* last byte */
    ck_assert_uint_eq(d, 3000000 + 3 * 512 + 511);
    ck_assert_uint_eq(n, 1);
    vvol_map(&v, v.size, 10, &d, &n);
    ck_assert_uint_eq(n, 0);
}
END_TEST

/* Random damage to valid layouts: every scan ends, ASan stays quiet. */
START_TEST(random_damage)
{
    struct lvset s;
    lvset_make(&s);
    const char *lvs[] = {"lin", "1", s.lin, "str", "1", s.stripe, "r1", "1", s.raid,
                         "r1_rimage_0", "0", s.ri0, "r1_rimage_1", "0", s.ri1, NULL};
    char *text = vg_text(2, lvs);
    struct mdisk *m = two_pv_disk();
    lvm_mda(m, P1, text, 512, false);
    lvm_mda(m, P2, text, MDA_SIZE - 1000, false);
    /* Logical partitions too. */
    mbr_entry(m->b, 2, 0, 0x05, 13 * MiB / 512, 4096);
    ebr(m, 13 * MiB / 512, 8, 100, 200, 300);
    ebr(m, 13 * MiB / 512 + 200, 8, 100, 0, 0);
    uint8_t *saved = malloc(m->size);
    memcpy(saved, m->b, m->size);
    srand(12345);
    static const uint64_t hot[] = {0, P1, P2, P1 + MDA_OFF, P2 + MDA_OFF, 13 * MiB};
    for (int it = 0; it < 400; it++) {
        int nflip = 1 + rand() % 8;
        for (int k = 0; k < nflip; k++) {
            uint64_t base = hot[rand() % VMFS_ARRAY_SIZE(hot)];
            uint64_t off = base + (uint64_t)(rand() % (k % 2 ? 2048 : 600));
            m->b[off] = (uint8_t)rand();
        }
        /* Re-sign the metadata area so damage in the text reaches the parser. */
        if (it % 3 == 0) {
            uint8_t *a = m->b + P1 + MDA_OFF;
            unit_le(a + 56, lcrc(a + 512, get_le64(a + 48) < 100000 ? get_le64(a + 48) : 0), 4);
            unit_le(a, lcrc(a + 4, 508), 4);
        }
        struct vlayout *lay = scan(m);
        char *j = rep_to_json(lay->facts), *t = rep_to_text(lay->facts);
        for (size_t i = 0; i < lay->nvols; i++) {
            const struct vvolume *v = &lay->vols[i];
            uint64_t d, n;
            vvol_map(v, v->size - 1, 1, &d, &n);
            ck_assert_uint_eq(n, 1);
        }
        free(j);
        free(t);
        vlayout_free(lay);
        memcpy(m->b, saved, m->size);
    }
    /* GPT too. */
    memset(m->b, 0, m->size);
    gpt_basic(m, 512);
    memcpy(saved, m->b, m->size);
    for (int it = 0; it < 300; it++) {
        for (int k = 0; k < 4; k++)
            m->b[rand() % 8192] = (uint8_t)rand();
        if (it % 2) {
            unit_le(m->b + 512 + 16, 0, 4);
            unit_le(m->b + 512 + 16, gcrc(m->b + 512, 92), 4);
        }
        vlayout_free(scan(m));
        memcpy(m->b, saved, m->size);
    }
    free(saved);
    mdisk_free(m);
    free(text);
    lvset_free(&s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("vol");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, mbr_primaries_and_logicals);
    tcase_add_test(tc, mbr_ebr_loop);
    tcase_add_test(tc, mbr_ebr_deep_chain);
    tcase_add_test(tc, mbr_past_end_and_overlaps);
    tcase_add_test(tc, small_and_empty_disks);
    tcase_add_test(tc, gpt_512_and_4k);
    tcase_add_test(tc, gpt_backup_used);
    tcase_add_test(tc, gpt_backup_at_alternate_lba);
    tcase_add_test(tc, gpt_absurd_geometry);
    tcase_add_test(tc, gpt_hybrid_and_unprotected);
    tcase_add_test(tc, content_signatures);
    tcase_add_test(tc, lvm_two_pvs_all_kinds);
    tcase_add_test(tc, lvm_whole_disk_and_wrap);
    tcase_add_test(tc, lvm_seqno_and_bad_crc);
    tcase_add_test(tc, lvm_two_vgs);
    tcase_add_test(tc, lvm_malformed_text);
    tcase_add_test(tc, text_parser);
    tcase_add_test(tc, map_striped_volume);
    tcase_add_test(tc, random_damage);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
