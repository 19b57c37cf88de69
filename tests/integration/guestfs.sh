#!/bin/bash
# vmfs: guest filesystems under NAME.d/fs/, through libguestfs appliances
# that read the disk over vmfs's own NBD server.
#
# One guestfish session builds a GPT disk holding ext4, xfs, vfat, btrfs
# and (when the appliance has mkntfs) ntfs, an LVM volume group with an
# ext4 LV and a swap LV, all filled from one tree of known files: text,
# random bytes, an empty file, symlinks, a nested tree, names with spaces
# and UTF-8, modes, an owner, nanosecond times, a hard link, a fifo, a
# device, an extended attribute, a sparse file and a 64 MiB file.  Beside
# it, made on the host: a partition of random bytes, an ext4 with the
# needs_recovery flag set (its journal must not be replayed), and a qcow2
# whose internal snapshot holds an older version of a file.
#
# The trees are read through a vmfs mount when NAME.d/fs/ exists there,
# otherwise through tests/integration/guest-tool (the same guest.h calls
# without FUSE), and compared with what was written: checksums, listings,
# link targets, sizes, modes.  The sources must stay unchanged, an
# appliance killed or hung is replaced at the next access, a copy whose
# appliance is killed under it still gets every byte, and the NBD bridge
# itself is checked with nbdinfo --map, nbdcopy and qemu-img.
#
# Appliance starts cost 20-70 s each in software emulation: the test keeps
# them few (about seven).  GUESTFS_TEST_DISKS=DIR reuses disks an earlier
# run kept (VMFS_TEST_KEEP=1) in DIR/src.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need guestfish qemu-img jq sfdisk mke2fs debugfs sha256sum nbdinfo nbdcopy
GUEST_TOOL=${GUEST_TOOL:-$top_builddir/tests/integration/guest-tool}
[ -x "$GUEST_TOOL" ] || hard_error "$GUEST_TOOL is not built (make check builds it)"

# Software emulation: /dev/kvm may be there and still abort qemu.
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
TMO=${VMFS_TEST_TIMEOUT:-300}   # a first access may start an appliance
# A call that takes longer kills its appliance (the hung-appliance check).
CALL_TMO=20
export VMFS_GUEST_CALL_TIMEOUT=$CALL_TMO
# Three views get appliances; at most two may run at once.
export VMFS_GUEST_MAX_APPLIANCES=2

SRC=$WORK/src
REF=$WORK/ref
FILES=$REF/files
mkdir -p "$SRC" "$REF"
# The NBD sockets of the appliances go here, where the test can find them.
export XDG_RUNTIME_DIR=$WORK/run
mkdir -m 0700 "$XDG_RUNTIME_DIR"

# ---- the known files -------------------------------------------------------

make_files() {
    local d=$1
    mkdir -p "$d/dir with spaces" "$d/ünïcödé" "$d/nested/a/b/c/d" "$d/many" "$d/private"
    printf 'hello, guest\n' >"$d/hello.txt"
    head -c 1048579 /dev/urandom >"$d/random.bin"
    : >"$d/empty"
    printf 'one\ntwo\n' >"$d/dir with spaces/file one.txt"
    printf 'utf-8 names\n' >"$d/ünïcödé/файл ☃.txt"
    printf 'deep\n' >"$d/nested/a/b/c/d/deep.txt"
    local i
    for ((i = 0; i < 100; i++)); do
        head -c $((i * 97 + 1)) /dev/urandom >"$d/many/f$i"
    done
    printf '#!/bin/sh\necho hi\n' >"$d/script.sh"
    chmod 0755 "$d/script.sh"
    printf 'secret\n' >"$d/private/key"
    chmod 0600 "$d/private/key"
    chmod 0750 "$d/private"
    ln -s hello.txt "$d/link"
    ln -s /etc/hostname "$d/abslink"
    ln -s "nested/a/b/c/d/deep.txt" "$d/deeplink"
}

# ---- the disks -------------------------------------------------------------

# Partitions (MiB): ext4, xfs, vfat, btrfs, ntfs, random, dirty ext4, LVM.
PSIZES=(300 320 64 160 64 16 32 100)

build_multi() {
    local img=$SRC/multi.img
    truncate -s 1100M "$img"
    {
        echo "label: gpt"
        local i
        for i in "${!PSIZES[@]}"; do
            if [ "$i" -eq 7 ]; then
                echo "size=${PSIZES[$i]}MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928"
            else
                echo "size=${PSIZES[$i]}MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
            fi
        done
    } | sfdisk -q "$img" >/dev/null || hard_error "sfdisk"
    (cd "$FILES" && tar --numeric-owner --format=posix -cf "$REF/files.tar" .)
    head -c 64M /dev/urandom >"$REF/big.bin"
    # What Windows leaves when it hibernates: ntfs-3g then refuses to
    # mount the volume read-write.
    { printf 'HIBR'; head -c 4092 /dev/zero; } >"$REF/hiberfil.sys"
    # vfat holds no symlinks or owners: its files are uploaded one by one.
    local fat=$REF/fat.gf f
    : >"$fat"
    while IFS= read -r -d '' f; do
        f=${f#./}
        if [ -d "$FILES/$f" ]; then
            echo "mkdir-p \"/$f\"" >>"$fat"
        elif [ -f "$FILES/$f" ] && [ ! -L "$FILES/$f" ]; then
            echo "upload \"$FILES/$f\" \"/$f\"" >>"$fat"
        fi
    done < <(cd "$FILES" && find . -mindepth 1 -print0 | sort -z)
    cat >"$REF/session.gf" <<EOF
add $img format:raw
run
mkfs ext4 /dev/sda1 label:vmfs-ext4
mkfs xfs /dev/sda2 label:vmfs-xfs
mkfs vfat /dev/sda3 label:VMFSFAT
mkfs btrfs /dev/sda4 label:vmfs-btrfs
-mkfs ntfs /dev/sda5 label:vmfs-ntfs
pvcreate /dev/sda8
vgcreate vg0 /dev/sda8
lvcreate lvext vg0 48
lvcreate lvswap vg0 8
mkfs ext4 /dev/vg0/lvext label:vmfs-lv
mkswap /dev/vg0/lvswap
mount /dev/sda1 /
tar-in $REF/files.tar /
upload $REF/big.bin /big.bin
ln /hello.txt /hardlink
mkfifo 0644 /fifo
mknod-c 0644 1 3 /null
setxattr user.vmfs hello 5 /hello.txt
chown 1234 5678 /hello.txt
utimens /hello.txt 1000000000 123456789 1234567890 987654321
touch /sparse
truncate-size /sparse 16777216
pwrite /sparse "in the middle" 8388608
umount /
mount /dev/sda2 /
tar-in $REF/files.tar /
umount /
mount /dev/sda3 /
$(cat "$fat")
umount /
mount /dev/sda4 /
tar-in $REF/files.tar /
upload $REF/big.bin /big.bin
umount /
-mount /dev/sda5 /
-tar-in $REF/files.tar /
-upload $REF/hiberfil.sys /hiberfil.sys
-umount /
mount /dev/vg0/lvext /
tar-in $REF/files.tar /
umount /
sync
EOF
    t guestfish -f "$REF/session.gf" >"$REF/session.log" 2>&1 || {
        sed 's/^/  | /' "$REF/session.log"
        skip "guestfish cannot build the test disk (no working appliance?)"
    }
    # Host-made partitions: random bytes, and an ext4 whose journal says
    # it needs recovery (mounting must not replay it).
    local start
    start=$(part_start "$img" 6)
    dd if=/dev/urandom of="$img" bs=1M seek=$((start / 1048576)) count=16 conv=notrunc status=none
    mke2fs -q -F -t ext4 -L vmfs-dirty -d "$FILES" "$REF/dirty.ext4" 32M >/dev/null ||
        hard_error "mke2fs"
    debugfs -w -R "feature needs_recovery" "$REF/dirty.ext4" >/dev/null 2>&1
    start=$(part_start "$img" 7)
    dd if="$REF/dirty.ext4" of="$img" bs=1M seek=$((start / 1048576)) conv=notrunc status=none
    ntfs_dirty "$img" "$(part_start "$img" 5)"
}

# ntfs_dirty IMAGE OFFSET: sets the "dirty" flag of the NTFS volume at
# OFFSET (in $Volume's $VOLUME_INFORMATION, in the MFT and its mirror), as
# a crash leaves it.  Does nothing where there is no NTFS.
ntfs_dirty() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
path, off = sys.argv[1], int(sys.argv[2])
f = open(path, "r+b")
f.seek(off)
bs = f.read(512)
if bs[3:11] != b"NTFS    ":
    sys.exit(0)
bps, spc = struct.unpack_from("<H", bs, 11)[0], bs[13]
mft, mirr = struct.unpack_from("<qq", bs, 48)
crec = struct.unpack_from("<b", bs, 64)[0]
size = 2 ** -crec if crec < 0 else crec * spc * bps
f.seek(off + mft * spc * bps + 3 * size)
rec = bytearray(f.read(size))
usa, n = struct.unpack_from("<HH", rec, 4)
plain = bytearray(rec)
for i in range(1, n):
    plain[i * bps - 2:i * bps] = rec[usa + 2 * i:usa + 2 * i + 2]
a = struct.unpack_from("<H", plain, 20)[0]
while struct.unpack_from("<I", plain, a)[0] != 0x70:
    a += struct.unpack_from("<I", plain, a + 4)[0]
p = a + struct.unpack_from("<H", plain, a + 20)[0] + 10
struct.pack_into("<H", rec, p, struct.unpack_from("<H", plain, p)[0] | 1)
for lcn in (mft, mirr):
    f.seek(off + lcn * spc * bps + 3 * size)
    f.write(rec)
PY
}

# part_start IMAGE N: byte offset of partition N.
part_start() {
    sfdisk -J "$1" | jq -r ".partitiontable.partitions[$(($2 - 1))].start * 512"
}

# A qcow2 holding an ext4 on the whole disk, with an internal snapshot
# "first" of version one; the current state is version two.
build_snap() {
    mkdir -p "$REF/v1" "$REF/v2"
    printf 'version one\n' >"$REF/v1/version.txt"
    printf 'same in both\n' >"$REF/v1/keep.txt"
    printf 'version two\n' >"$REF/v2/version.txt"
    printf 'same in both\n' >"$REF/v2/keep.txt"
    printf 'only in two\n' >"$REF/v2/new.txt"
    mke2fs -q -F -t ext4 -U 11111111-2222-3333-4444-555555555555 -E root_owner=0:0 \
        -d "$REF/v1" "$REF/v1.ext4" 16M >/dev/null || hard_error "mke2fs"
    mke2fs -q -F -t ext4 -U 11111111-2222-3333-4444-555555555555 -E root_owner=0:0 \
        -d "$REF/v2" "$REF/v2.ext4" 16M >/dev/null || hard_error "mke2fs"
    qemu-img convert -q -f raw -O qcow2 "$REF/v1.ext4" "$SRC/snap.qcow2"
    qemu-img snapshot -c first "$SRC/snap.qcow2"
    qemu-img convert -q -n -f raw -O qcow2 "$REF/v2.ext4" "$SRC/snap.qcow2"
}

if [ -n "${GUESTFS_TEST_DISKS:-}" ]; then
    cp -a "$GUESTFS_TEST_DISKS/src/." "$SRC/"
    cp -a "$GUESTFS_TEST_DISKS/ref/." "$REF/"
else
    mkdir -p "$FILES"
    make_files "$FILES"
    build_multi
    build_snap
fi
echo "disks built"
NTFS=false
grep -q "^-mkfs ntfs" "$REF/session.gf" && ! grep -q "mkfs.*ntfs.*error\|error.*mkntfs" \
    "$REF/session.log" && NTFS=true
src_state "$SRC" >"$REF/src.state"
stat -c '%Y' "$SRC"/* >"$REF/src.mtimes"

# ---- reading the trees -----------------------------------------------------

# The views are read through a vmfs mount when it has fs/ trees, else
# through guest-tool.  Both offer: gcopy IMAGE FS DEST (like cp -a),
# gwalk IMAGE FS (a listing), gcat IMAGE FS PATH.
MNT=$WORK/mnt
MODE=tool
if [ -c /dev/fuse ] && [ -x "$VMFS" ] && [ "${GUESTFS_TEST_MODE:-}" != tool ]; then
    vmfs_mount "$SRC" "$MNT" -o idle_timeout=600 2>/dev/null || vmfs_mount "$SRC" "$MNT"
    if t ls "$MNT/multi.img.d/fs/" >/dev/null 2>&1; then
        MODE=fuse
    fi
fi
echo "reading the guest trees through: $MODE"

TOOL_IN=$WORK/tool.in
TOOL_OUT=$WORK/tool.out
TOOL_PID=
tool_start() {
    mkfifo "$TOOL_IN"
    "$GUEST_TOOL" "$SRC" <"$TOOL_IN" >"$TOOL_OUT" 2>"$WORK/tool.err" &
    TOOL_PID=$!
    exec 7>"$TOOL_IN"
    echo 0 >"$WORK/tool.line"
}
# tool CMD ARGS...: runs one guest-tool command, its output on stdout.  The
# count of output lines consumed lives in a file: tool runs in subshells.
tool() {
    local IFS=$'\t' n seen out
    echo "$*" >&7
    echo "echo	--end--" >&7
    seen=$(cat "$WORK/tool.line")
    for ((n = 0; n < TMO * 10; n++)); do
        tail -n +$((seen + 1)) "$TOOL_OUT" | grep -q '^--end--$' && break
        kill -0 "$TOOL_PID" 2>/dev/null || break
        sleep 0.1
    done
    out=$(tail -n +$((seen + 1)) "$TOOL_OUT" | sed '/^--end--$/q')
    echo $((seen + $(printf '%s\n' "$out" | wc -l))) >"$WORK/tool.line"
    printf '%s\n' "$out" | sed '/^--end--$/d'
}
tool_stop() {
    exec 7>&-
    wait_gone "$TOOL_PID" 60 || kill -KILL "$TOOL_PID"
    wait "$TOOL_PID"
}

if [ "$MODE" = tool ]; then
    tool_start
fi

# fsdir IMAGE[@SNAP] FS: the directory of a filesystem on the mount.
fsdir() {
    local img=${1%@*} snap=
    [ "$1" != "$img" ] && snap=${1#*@}
    if [ -n "$snap" ]; then
        echo "$MNT/$img.d/snapshots/$snap.d/fs/$2"
    else
        echo "$MNT/$img.d/fs/$2"
    fi
}

topen() {
    local img=${1%@*} snap=
    [ "$1" != "$img" ] && snap=${1#*@}
    if [ -n "$snap" ]; then
        tool open "$SRC/$img" "$snap" >/dev/null
    else
        tool open "$SRC/$img" >/dev/null
    fi
}

gcopy() {
    rm -rf "$3"
    if [ "$MODE" = fuse ]; then
        t cp -a "$(fsdir "$1" "$2")" "$3"
    else
        topen "$1"
        [ "$(tool copy "$2" / "$3")" = copied ]
    fi
}

# gwalk IMAGE FS: "path type mode size [-> target]" per entry, sorted (a
# directory's size depends on the filesystem: shown as "-").
gwalk() {
    if [ "$MODE" = fuse ]; then
        (cd "$(fsdir "$1" "$2")" && t find . -mindepth 1 -printf '%P\t%y\t%m\t%s\t%l\n') | walk_fmt
    else
        topen "$1"
        tool walk "$2" / | awk -F'\t' -v OFS='\t' '{ print $1, $2, $3, $4, ($2 == "l") ? substr($NF, 4) : "" }' |
            walk_fmt
    fi
}
# walk_fmt: "path type mode size target" lines into the compared form.
walk_fmt() {
    awk -F'\t' '{ m = substr("0000" $3, length($3) + 1); s = ($2 == "d") ? "-" : $4
                   l = ($2 == "l") ? "\t-> " $5 : ""; printf "%s\t%s\t%s\t%s%s\n", $1, $2, m, s, l }' | sort
}

# gstat IMAGE FS PATH: "type mode size nlink uid:gid mtime" of one entry.
gstat() {
    if [ "$MODE" = fuse ]; then
        t stat -c '%F %a %s %h %u:%g %.9Y' "$(fsdir "$1" "$2")$3" |
            sed 's/^regular empty file/regular file/'
    else
        topen "$1"
        tool stat "$2" "$3" | awk -F'\t' '{
            t = $2 == "f" ? "regular file" : $2 == "d" ? "directory" : $2 == "l" ? "symbolic link" :
                $2 == "p" ? "fifo" : $2 == "c" ? "character special file" : $2
            printf "%s %o %s %s %s %s\n", t, strtonum("0" $3), $4, $5, $6, $7 }'
    fi
}

gxattr() {
    if [ "$MODE" = fuse ]; then
        getfattr --absolute-names -h -e hex -n "$4" "$(fsdir "$1" "$2")$3" 2>/dev/null |
            sed -n "s/^$4=0x//p"
    else
        topen "$1"
        tool xattrs "$2" "$3" | sed -n "s/^$4=//p"
    fi
}

greport() {
    if [ "$MODE" = fuse ]; then
        t cat "$MNT/$1.d/info.json"
    else
        topen "$1"
        tool report
    fi
}

# host_walk DIR: the same listing of a host tree.
host_walk() {
    (cd "$1" && find . -mindepth 1 -printf '%P\t%y\t%m\t%s\t%l\n') | walk_fmt
}

# same_tree A B: same names, types, sizes, contents and link targets.
# (lost+found and the big file are not part of the written tree).
same_tree() {
    local x=(-x lost+found -x big.bin)
    diff -r --no-dereference "${x[@]}" "$1" "$2" >/dev/null ||
        { diff -r --no-dereference "${x[@]}" "$1" "$2" | head; return 1; }
}

# walk_has LISTING PATTERN: the listing has a line matching PATTERN.
walk_has() { grep -qP -- "$2" "$1" || { echo "no line /$2/ in $1"; return 1; }; }

OUT=$WORK/out
mkdir -p "$OUT"

# hypervisors: the qemu processes of this test's vmfs (or guest-tool).
hypervisors() {
    local parent
    if [ "$MODE" = fuse ]; then parent=$VMFS_PID; else parent=$TOOL_PID; fi
    pgrep -P "$parent" -f qemu-system | sort
}
signal_pids() {
    local sig=$1 p
    shift
    [ $# -gt 0 ] || return 1
    for p in "$@"; do kill "-$sig" "$p" || return 1; done
}
# glist IMAGE FS: the filesystem's root can be listed.
glist() {
    if [ "$MODE" = fuse ]; then
        t ls "$(fsdir "$1" "$2")" >/dev/null
    else
        topen "$1"
        ! tool ls "$2" / | grep -q "^error:"
    fi
}

# ---- a killed appliance is replaced at the next access -----------------------

# Before anything is cached: the first access starts multi.img's
# appliance; its hypervisor is killed; the next access, a listing nobody
# asked for yet, must start a new appliance by itself and succeed.
check "multi.img: the first access starts an appliance" test -n "$(gstat multi.img p1 /hello.txt)"
first=$(hypervisors)
check "its hypervisor runs" test -n "$first"
# shellcheck disable=SC2086
check "and is killed" signal_pids KILL $first
check "the next access (a listing) starts a new appliance and succeeds" \
    test "$(gwalk multi.img p1 | wc -l)" -gt 100
second=$(hypervisors)
check "a new hypervisor runs" test -n "$second" -a "$second" != "$first"

# ---- a read under way when the appliance dies ----------------------------------

# btrfs p4's 64 MiB file is read through the appliance, 2 MiB per call.
# Its hypervisor is killed while the copy is under way: the call it broke
# goes to a new appliance, and the copy gets every byte instead of EIO.
# The mount is read with O_DIRECT: the kernel would quietly read again a
# page whose read-ahead failed, and hide the error.
gget() {
    if [ "$MODE" = fuse ]; then
        t dd if="$(fsdir "$1" "$2")$3" of="$4" bs=1M iflag=direct status=none
    else
        topen "$1"
        [ "$(tool get "$2" "$3" "$4")" = got ]
    fi
}
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
inflight=$WORK/inflight.bin
rm -f "$inflight"
gget multi.img p4 /big.bin "$inflight" &
reader=$!
for ((i = 0; i < TMO * 10; i++)); do
    [ "$(size_of "$inflight")" -gt 0 ] && break
    kill -0 "$reader" 2>/dev/null || break
    sleep 0.1
done
under_way() { kill -0 "$reader" 2>/dev/null && [ "$(size_of "$inflight")" -lt 67108864 ]; }
check "the copy of p4's 64 MiB file is under way" under_way
# shellcheck disable=SC2046
check "its hypervisor is killed meanwhile" signal_pids KILL $(hypervisors)
killed_at=$(size_of "$inflight")
echo "killed with $killed_at of 67108864 bytes copied"
check "the copy ends well (no EIO)" wait "$reader"
check "and has every byte" cmp "$REF/big.bin" "$inflight"
third=$(hypervisors)
check "a new hypervisor took over" test -n "$third" -a "$third" != "$second"
second=$third
rm -f "$inflight"

# ---- the NBD bridge, with other NBD clients ------------------------------------

# The appliance reads the disk from vmfs's NBD server; any client can.
# The running appliance's socket is the newest (appN, N counts up).
sock=$(find "$XDG_RUNTIME_DIR" -name nbd.sock | sort -V | tail -1)
uri="nbd+unix:///?socket=$sock"
check "the appliance's NBD socket exists" test -S "$sock"
check "nbdinfo: read-only, the disk's size" \
    bash -c "nbdinfo --json '$uri' | jq -e '.exports[0].\"is_read_only\" == true and .exports[0].\"export-size\" == $(stat -c %s "$SRC/multi.img")' >/dev/null"
check "nbdinfo --map: base:allocation, holes where the image has them" \
    bash -c "nbdinfo --map '$uri' | grep -q 'hole,zero'"
nbd_copy_same() {
    t nbdcopy "$uri" "$WORK/nbd.raw" && cmp "$WORK/nbd.raw" "$1"
    local r=$?
    rm -f "$WORK/nbd.raw"
    return $r
}
qemu_copy_same() {
    t qemu-img convert -f raw "$uri" -O raw "$WORK/nbd.raw" && cmp "$WORK/nbd.raw" "$1"
    local r=$?
    rm -f "$WORK/nbd.raw"
    return $r
}
check "nbdcopy of the export equals the image" nbd_copy_same "$SRC/multi.img"
flat=$SRC/multi.img
[ "$MODE" = fuse ] && flat=$MNT/multi.img
check "qemu-img convert of the export equals the flat file" qemu_copy_same "$flat"
check_not "writes to the export are refused" \
    bash -c "printf x | nbdcopy - '$uri' 2>/dev/null"

# ---- multi.img: every filesystem ---------------------------------------------


host_walk "$FILES" >"$REF/files.walk"

# ext4 in p1: everything the tree holds, with its attributes.
check "ext4 p1: the tree copies out like cp -a" gcopy multi.img p1 "$OUT/p1"
for f in hello.txt random.bin empty "dir with spaces/file one.txt" "ünïcödé/файл ☃.txt" \
    nested/a/b/c/d/deep.txt many/f42 many/f99 private/key script.sh; do
    check "ext4 p1: $f has its bytes" cmp "$FILES/$f" "$OUT/p1/$f"
done
check "ext4 p1: the 64 MiB file has its bytes" cmp "$REF/big.bin" "$OUT/p1/big.bin"
check "ext4 p1: symlink target" test "$(readlink "$OUT/p1/link")" = hello.txt
check "ext4 p1: absolute symlink target" test "$(readlink "$OUT/p1/abslink")" = /etc/hostname
gwalk multi.img p1 >"$WORK/p1.walk"
for l in "^link\tl\t0777\t9\t-> hello.txt$" "^private\td\t0750\t-$" "^private/key\tf\t0600\t7$" \
    "^script.sh\tf\t0755\t" "^empty\tf\t0644\t0$" "^many/f99\tf\t0644\t9604$" "^fifo\tp\t0644\t0$" \
    "^null\tc\t0644\t" "^ünïcödé/файл ☃.txt\tf\t" "^dir with spaces/file one.txt\tf\t0644\t8$" \
    "^sparse\tf\t0644\t16777216$" "^big.bin\tf\t0644\t67108864$"; do
    check "ext4 p1: listing has /$l/" walk_has "$WORK/p1.walk" "$l"
done
check "ext4 p1: hello.txt: owner, mode, size, two links, mtime to the nanosecond" \
    test "$(gstat multi.img p1 /hello.txt)" = "regular file 644 13 2 1234:5678 1234567890.987654321"
check "ext4 p1: hard link shares its inode count" \
    test "$(gstat multi.img p1 /hardlink | cut -d' ' -f5)" = 2
check "ext4 p1: the extended attribute" test "$(gxattr multi.img p1 /hello.txt user.vmfs)" = 68656c6c6f
check "ext4 p1: the sparse file reads its middle" \
    test "$(tail -c +8388609 "$OUT/p1/sparse" | head -c 13)" = "in the middle"
check "ext4 p1: the sparse file is zeros elsewhere" \
    cmp -n 8388608 "$OUT/p1/sparse" /dev/zero

# The other filesystems hold the same tree.
for fs in p2:xfs p4:btrfs lvm/vg0/lvext:ext4-on-LVM; do
    part=${fs%%:*} name=${fs#*:}
    check "$name $part: the tree copies out" gcopy multi.img "$part" "$OUT/$name"
    check "$name $part: same files, links and contents as written" \
        same_tree "$FILES" "$OUT/$name"
    gwalk multi.img "$part" | grep -v "^lost+found\|^big.bin" >"$WORK/$name.walk"
    check "$name $part: same names, types, modes, sizes, link targets" \
        diff -u "$REF/files.walk" "$WORK/$name.walk"
done
check "btrfs p4: the 64 MiB file (read through the appliance)" cmp "$REF/big.bin" "$OUT/btrfs/big.bin"

check "vfat p3: the tree copies out" gcopy multi.img p3 "$OUT/vfat"
(cd "$FILES" && find . -type f ! -type l -print0 | sort -z | xargs -0 sha256sum) >"$REF/fat.sums"
check "vfat p3: every regular file has its bytes (UTF-8 names too)" \
    bash -c "cd '$OUT/vfat' && sha256sum --quiet -c '$REF/fat.sums'"

if $NTFS; then
    check "ntfs p5 (hibernated and dirty): the tree copies out" gcopy multi.img p5 "$OUT/ntfs"
    check "ntfs p5: every regular file has its bytes" \
        bash -c "cd '$OUT/ntfs' && sha256sum --quiet -c '$REF/fat.sums'"
fi

# Not mountable: random bytes, swap.  Empty directories, with reasons.
for part in p6 lvm/vg0/lvswap; do
    check "$part: cannot be mounted: an empty directory" \
        test "$(gwalk multi.img "$part" | wc -l)" = 0
done
check "dirty ext4 p7: mounts without replaying its journal" gcopy multi.img p7 "$OUT/dirty"
check "dirty ext4 p7: its files are there" same_tree "$FILES" "$OUT/dirty"

greport multi.img >"$WORK/multi.json"
jq_checks "$WORK/multi.json" "report" \
    "p1 ext4 mounted read-only without its journal" \
    '.filesystems[] | select(.view == "p1") | .type == "ext4" and .mounted == true and (.mount_options | test("noload"))' \
    "p1 label" '.filesystems[] | select(.view == "p1") | .label == "vmfs-ext4"' \
    "p2 xfs without log recovery" \
    '.filesystems[] | select(.view == "p2") | .type == "xfs" and (.mount_options | test("norecovery"))' \
    "p4 btrfs without log replay" \
    '.filesystems[] | select(.view == "p4") | .type == "btrfs" and (.mount_options | test("nologreplay"))' \
    "p6 random bytes: not mounted, with a reason" \
    '.filesystems[] | select(.view == "p6") | .mounted == false and (.reason | length > 0)' \
    "p7 dirty ext4 mounted without its journal" \
    '.filesystems[] | select(.view == "p7") | .mounted == true and (.mount_options | test("noload"))' \
    "swap LV: not mounted, says swap" \
    '.filesystems[] | select(.view == "lvm/vg0/lvswap") | .mounted == false and (.reason | test("swap"))' \
    "LV ext4 label" '.filesystems[] | select(.view == "lvm/vg0/lvext") | .label == "vmfs-lv"'
if $NTFS; then
    check "report: p5 ntfs (hibernated and dirty) mounted read-only" \
        jq_true "$WORK/multi.json" '.filesystems[] | select(.view == "p5") | .mounted == true'
fi

# ---- a hung appliance, then snapshots ------------------------------------------

# snap.qcow2's appliance starts; its hypervisor is stopped (SIGSTOP): the
# next call must fail with EIO once the call timeout has passed, not hang;
# the access after that gets a new appliance.
# Its report, read before, knows the filesystem from its signature only
# and has not tried it; read again later it must show what the appliance
# found (reports are made again when the guest's facts change).
if [ "$MODE" = fuse ]; then
    greport snap.qcow2 >"$WORK/snap-before.json"
    check "snap.qcow2's report before any access: not tried yet" \
        jq_true "$WORK/snap-before.json" '.filesystems[] | select(.view == "disk") | .type == "ext4" and .mounted == null'
fi
check "snap.qcow2: the first access starts an appliance" \
    test -n "$(gstat snap.qcow2 disk /keep.txt)"
hung=$(comm -13 <(echo "$second") <(hypervisors))
# shellcheck disable=SC2086
check "its hypervisor is stopped" signal_pids STOP $hung
t0=$SECONDS
check_not "a listing on the hung appliance fails instead of hanging" glist snap.qcow2 disk
check "it failed within the call timeout and a little" test $((SECONDS - t0)) -lt $((CALL_TMO + 30))
check "the stopped hypervisor was killed" \
    bash -c "! kill -0 $hung 2>/dev/null || ! grep -qs '^State:.*T' /proc/$hung/status"
check "the next access gets a new appliance and copies the tree" gcopy snap.qcow2 disk "$OUT/snap-now"
check "snap.qcow2 current: version two" same_tree "$REF/v2" "$OUT/snap-now"
if [ "$MODE" = fuse ]; then
    greport snap.qcow2 >"$WORK/snap-after.json"
    check "snap.qcow2's report now: mounted read-only" \
        jq_true "$WORK/snap-after.json" '.filesystems[] | select(.view == "disk") | .mounted == true and (.mount_options | test("ro"))'
fi
check "snap.qcow2 snapshot first: copies out" gcopy snap.qcow2@first disk "$OUT/snap-first"
check "snap.qcow2 snapshot first: version one, without new.txt" same_tree "$REF/v1" "$OUT/snap-first"
# Three views were used (multi.img, snap.qcow2 and its snapshot): the
# idlest appliance made room for the third.
at_most_two() {
    local i
    for ((i = 0; i < 100; i++)); do
        [ "$(hypervisors | wc -l)" -le 2 ] && return 0
        sleep 0.2
    done
    echo "$(hypervisors | wc -l) hypervisors run"
    return 1
}
check "at most max_appliances (2) appliances run" at_most_two

# ---- the sources -------------------------------------------------------------

check "source images unchanged (sha256, size, times)" unchanged "$SRC" "$REF/src.state"
check "dirty ext4 still needs recovery (nothing replayed onto the image)" \
    bash -c "dd if='$SRC/multi.img' bs=1M skip=$(($(part_start "$SRC/multi.img" 7) / 1048576)) count=32 status=none |
             cmp - '$REF/dirty.ext4'"

if [ "$MODE" = tool ]; then
    tool_stop
fi
finish
