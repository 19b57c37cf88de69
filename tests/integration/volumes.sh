#!/bin/bash
# vmfs: partitions as NAME.d/pN, byte-identical to the disk bytes at the
# offsets the partitioning tool itself reports (sfdisk -J, fdisk -l), for MBR
# with logical partitions, GPT, GPT with 4096-byte sectors, as raw and
# qcow2; damaged tables (primary GPT header, a looping EBR chain, a table
# past the end of the disk) still show what is sane and say what is wrong.
# shellcheck source=tests/integration/lib.sh disable=SC1091
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img sfdisk fdisk jq python3 dd cmp mkfs.ext4 e2fsck blkid
need_fuse
need_vmfs_info

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC" "$REF"

# mkdisk FILE SIZE: a raw file of SIZE filled with non-zero, offset-seeded
# bytes, so that a partition read from a wrong offset cannot match.
mkdisk() { probe mkraw "$1" "$2" "0:$2:rand" || hard_error "mkraw $1"; }

# shellcheck disable=SC2317 # called through check
e2check() { t e2fsck -fn "$1" >/dev/null 2>&1 || { echo "e2fsck -fn $1 failed"; return 1; }; }

# parts FILE [SECTOR_SIZE]: "NUMBER START_SECTOR SECTORS" per partition, as
# sfdisk (512-byte sectors) or fdisk -b (4096) reports them.
parts() {
    if [ "${2:-512}" = 512 ]; then
        sfdisk -J "$1" | jq -r '.partitiontable.partitions[] |
            "\(.node | capture("(?<n>[0-9]+)$").n) \(.start) \(.size)"'
    else
        fdisk -b "$2" -l -o Device,Start,Sectors "$1" |
            awk -v f="$1" 'index($1, f) == 1 { n = substr($1, length(f) + 1); print n, $2, $3 }'
    fi
}

# check_parts IMAGE_IN_SRC RAW [SECTOR_SIZE]: every partition of RAW shows
# as pN with its bytes; info.json and vmfs-info give the same offsets.
check_parts() {
    local img=$1 raw=$2 ss=${3:-512} name n start count first=1 d
    name=$(basename "$img")
    d=$MNT/$name.d
    while read -r n start count; do
        dd if="$raw" of="$REF/$name.p$n" bs="$ss" skip="$start" count="$count" status=none ||
            hard_error "dd $raw"
        check "$name p$n: size $((count * ss))" size_is "$d/p$n" $((count * ss))
        check "$name p$n: the bytes at sector $start" same_file "$d/p$n" "$REF/$name.p$n"
        check "$name p$n: info.json start $((start * ss))" jq_true "$d/info.json" \
            ".partitions[] | select(.number == $n) | .start == $((start * ss)) and
             .size == $((count * ss)) and .end == $(((start + count) * ss - 1)) and
             .size_sectors == $((count * ss / 512)) and .path == \"p$n\""
        if [ "$first" = 1 ]; then
            check "$name: vmfs-info --json .partitions[0].start" \
                test "$(t "$VMFS_INFO" --json "$img" | jq .partitions[0].start)" = $((start * ss))
            first=0
        fi
    done < <(parts "$raw" "$ss")
}

# ---- images ------------------------------------------------------------

# mbr: p1 (ext4, bootable), p2 extended with logicals p5 and p6, p3.
(
    cd "$REF" || exit 1
    mkdisk mbr.img 64M
    sfdisk -q mbr.img <<'EOF' || exit 1
label: dos
label-id: 0x5eed0001
mbr.img1 : start=2048, size=16M, type=83, bootable
mbr.img2 : size=40M, type=5
mbr.img5 : size=8M, type=82
mbr.img6 : size=10M, type=8e
mbr.img3 : size=4M, type=83
EOF
    mkfs.ext4 -q -F -L mbrroot -E offset=1048576 mbr.img 16M || exit 1
) || hard_error "building mbr.img"
qemu-img convert -f raw -O qcow2 "$REF/mbr.img" "$SRC/mbr.qcow2" || hard_error "convert"

# gpt: three partitions with names and attributes.
(
    cd "$REF" || exit 1
    mkdisk gpt.img 64M
    sfdisk -q gpt.img <<'EOF' || exit 1
label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
start=2048, size=8M, type=U, name="EFI system"
size=16M, type=L, name="root fs"
size=10M, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, attrs="RequiredPartition GUID:60"
EOF
) || hard_error "building gpt.img"
qemu-img convert -f raw -O qcow2 "$REF/gpt.img" "$SRC/gpt.qcow2" || hard_error "convert"

# gpt4k: GPT with 4096-byte sectors.  sfdisk 2.38 has no --sector-size;
# fdisk -b 4096 partitions a plain file the same way, without a loop device.
mkdisk "$REF/gpt4k.img" 64M
printf 'g\nn\n\n\n+8M\nn\n\n\n+16M\nx\nn\n2\nfour k\nr\nw\n' |
    fdisk -b 4096 "$REF/gpt4k.img" >/dev/null 2>&1 || hard_error "fdisk -b 4096"
cp "$REF/gpt4k.img" "$SRC/gpt4k.img"

# gptbad: the primary GPT header damaged (its my_lba field); the backup
# holds the same table.
cp "$REF/gpt.img" "$SRC/gptbad.img"
printf '\x07' | dd of="$SRC/gptbad.img" bs=1 seek=$((512 + 24)) conv=notrunc status=none

# loop: the second EBR's link points back at the first one.
(
    cd "$REF" || exit 1
    mkdisk loop.img 32M
    sfdisk -q loop.img <<'EOF' || exit 1
label: dos
loop.img1 : start=2048, size=24M, type=5
loop.img5 : size=4M, type=83
loop.img6 : size=4M, type=83
loop.img7 : size=4M, type=83
EOF
) || hard_error "building loop.img"
LOOP_P5=$(sfdisk -J "$REF/loop.img" | jq '.partitiontable.partitions[1].start')
# The second EBR's link entry (slot 2) gets relative start 0: the first EBR.
python3 - "$REF/loop.img" <<'EOF' || hard_error "patch EBR"
import struct, sys
with open(sys.argv[1], "r+b") as f:
    def entry(sector, slot):
        f.seek(sector * 512 + 0x1be + 16 * slot)
        return struct.unpack("<4xB3xII", f.read(16))
    ext = entry(0, 0)[1]                  # the extended partition's start
    ebr2 = ext + entry(ext, 1)[1]         # where the first EBR's link points
    f.seek(ebr2 * 512 + 0x1be + 16 + 8)
    f.write(struct.pack("<I", 0))
EOF
cp "$REF/loop.img" "$SRC/loop.img"

# pastend: a 64 MiB table on a disk cut to 40 MiB: p1 fits, p2 is clipped,
# p3 starts past the end.
(
    cd "$REF" || exit 1
    mkdisk pastend.img 64M
    sfdisk -q pastend.img <<'EOF' || exit 1
label: dos
start=2048, size=16M, type=83
size=32M, type=83
size=8M, type=83
EOF
) || hard_error "building pastend.img"
cp "$REF/pastend.img" "$SRC/pastend.img"
truncate -s 40M "$SRC/pastend.img"

vmfs_mount "$SRC" "$MNT" || hard_error "mount"

# gptz: a compressed qcow2 whose one partition holds text.
{ probe mkraw "$REF/gptz.img" 4M 0:4M:text &&
    printf 'label: gpt\nstart=2048, size=2M, type=L\n' | sfdisk -q "$REF/gptz.img" &&
    qemu-img convert -c -f raw -O qcow2 "$REF/gptz.img" "$SRC/gptz.qcow2" &&
    dd if="$REF/gptz.img" of="$REF/gptz-p1" bs=1M skip=1 count=2 status=none; } ||
    hard_error "building gptz.qcow2"

# ---- checks ------------------------------------------------------------

check_parts "$SRC/mbr.qcow2" "$REF/mbr.img"
D=$MNT/mbr.qcow2.d
check "mbr: no p4" check_absent "$D/p4"
check "mbr: p1 passes e2fsck -fn" e2check "$D/p1"
check "mbr: blkid sees ext4 labelled mbrroot in p1" \
    test "$(t blkid -o value -s LABEL "$D/p1")" = mbrroot
check "mbr: info.json says mbr, disk id, kinds and content" jq_true "$D/info.json" \
    '.partition_table == "mbr" and .disk_id == "0x5eed0001" and
     ([.partitions[] | .kind] == ["primary", "extended", "primary", "logical", "logical"]) and
     (.partitions[0] | .bootable and .content == "ext4" and .label == "mbrroot") and
     (.partitions[] | select(.number == 5) | .type == "0x82" and .type_name == "Linux swap / Solaris")'
check "mbr: info shows the partition table" grep -q "^partition table: mbr" "$D/info"

check_parts "$SRC/gpt.qcow2" "$REF/gpt.img"
D=$MNT/gpt.qcow2.d
check "gpt: info.json names, types, attributes, disk GUID" jq_true "$D/info.json" \
    '.partition_table == "gpt" and .sector_size == 512 and .gpt_header == "primary" and
     .disk_guid == "01234567-89AB-CDEF-0123-456789ABCDEF" and
     ([.partitions[] | .name] == ["EFI system", "root fs", ""]) and
     ([.partitions[] | .type_name] == ["EFI System", "Linux filesystem", "Linux LVM"]) and
     (.partitions[2].attribute_flags == ["RequiredPartition", "GUID:60"])'
guids=$(sfdisk -J "$REF/gpt.img" | jq -c '[.partitiontable.partitions[] | .uuid]')
check "gpt: partition GUIDs as sfdisk shows them" jq_true "$D/info.json" "[.partitions[] | .guid] == $guids"

check_parts "$SRC/gpt4k.img" "$REF/gpt4k.img" 4096
check "gpt4k: 4096-byte sectors, name" jq_true "$MNT/gpt4k.img.d/info.json" \
    '.partition_table == "gpt" and .sector_size == 4096 and .partitions[1].name == "four k" and
     .partitions[1].start_lba == 2304'

check_parts "$SRC/gptbad.img" "$REF/gpt.img"
check "gptbad: the backup header is used and it says so" jq_true "$MNT/gptbad.img.d/info.json" \
    '.gpt_header == "backup" and (.problems | any(test("primary header .* using the backup")))'

D=$MNT/loop.img.d
check "loop: the info says the EBR chain loops" jq_true "$D/info.json" \
    '.problems | any(test("loops back"))'
for n in 1 5 6; do
    check "loop: p$n present" test -f "$D/p$n"
done
check "loop: p5 bytes" cmp <(t cat "$D/p5") <(dd if="$REF/loop.img" bs=512 skip="$LOOP_P5" \
    count=8192 status=none)
check "loop: p7 (beyond the loop) absent" check_absent "$D/p7"

D=$MNT/pastend.img.d
check "pastend: p1 whole" size_is "$D/p1" $((16 * 1048576))
check "pastend: p2 clipped at the end of the disk" size_is "$D/p2" $((40 * 1048576 - 17 * 1048576))
check "pastend: p2 bytes" cmp <(t cat "$D/p2") <(dd if="$SRC/pastend.img" bs=1M skip=17 status=none)
check "pastend: p3 absent" check_absent "$D/p3"
check "pastend: info.json reports both" jq_true "$D/info.json" \
    '(.problems | any(test("p2 ends"))) and (.problems | any(test("p3 starts"))) and
     (.partitions[2].path == null) and (.partitions[1].beyond_end == true)'

check "gptz: a page read from p1 brings its compressed cluster into p1's page cache" \
    probe fill "$MNT/gptz.qcow2.d/p1" "$REF/gptz-p1" 72K 64K 128K yes

check "daemon still alive after the damaged tables" daemon_alive
finish
