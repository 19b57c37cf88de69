#!/bin/bash
# vmfs: damaged images of every format, made at random from good ones, never
# crash or hang the reading code.  For each seed image (every format and
# subformat, snapshots, backing files, MBR, GPT and LVM), fuzz-image
# writes damaged copies (bit flips, edge values in either byte order, runs
# copied from elsewhere, the file cut short or grown) and reads each one the
# way the daemon does: info and info.json, snapshots, partitions, reads,
# read plans, holes, allocation.  Under the sanitizer build any memory error
# fails the test; a copy that takes more than FUZZ_TIMEOUT seconds is a hang
# and fails it too.  The damage is drawn from a fixed seed, so a failure
# repeats; a failing copy is kept and named in the output.
#
#   FUZZ_ITERATIONS  damaged copies per seed image (default 250)
#   FUZZ_SEED        the random seed (default 1)
#   FUZZ_TIMEOUT     seconds one copy may take (default 30)
#   FUZZ_KEEP        a directory to copy failing cases into
#   FUZZ_MOUNTED     damaged copies per seed that a mount serves (default 12)
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 sfdisk
need_vmfs_info
FUZZ=${FUZZ_IMAGE:-$top_builddir/tests/fuzz/fuzz-image}
[ -x "$FUZZ" ] || hard_error "$FUZZ is not built"
ITER=${FUZZ_ITERATIONS:-250}
SEED=${FUZZ_SEED:-1}
LIMIT=${FUZZ_TIMEOUT:-30}

SEEDS=$WORK/seeds
mkdir -p "$SEEDS"

# A small disk with an MBR of three partitions (one extended, holding a
# logical one) and a pattern in each MiB, scattered so tables have work.
RAW=$SEEDS/disk.raw
probe mkraw "$RAW" 6M 0:64K:rand 1M:64K:0x5a 2M:256K:rand 5M:1M:rand || hard_error "mkraw"
sfdisk -q "$RAW" >/dev/null <<'EOF' || hard_error "sfdisk"
label: dos
start=2048, size=2048, type=83
start=4096, size=4096, type=5
start=6144, size=2048, type=83
start=8192, size=2048, type=83
EOF

# seed NAME MAKE-COMMAND...: a seed in a directory of its own (with the
# files it needs beside it).
seed() {
    local name=$1
    shift
    mkdir -p "$SEEDS/$name.dir"
    (cd "$SEEDS/$name.dir" && "$@") >/dev/null 2>&1 || hard_error "making seed $name"
    [ -s "$SEEDS/$name.dir/$name" ] || hard_error "seed $name not made"
}
conv() { qemu-img convert -f raw -O "$1" "${@:3}" "$RAW" "$2"; } # FORMAT OUT [OPTION...]
scatter() { # FORMAT FILE: a few scattered writes through qemu-io
    qemu-io -f "$1" -c "write -P 0x11 512 4k" -c "write -P 0x22 3M 8k" \
        -c "write -z 5M 64k" -c "discard 2176k 64k" "$2"
}

seed v3.qcow2 sh -c "qemu-img convert -f raw -O qcow2 -o cluster_size=4096 $RAW v3.qcow2 &&
    qemu-img snapshot -c first v3.qcow2 && qemu-io -f qcow2 -c 'write -P 0x33 1M 64k' v3.qcow2 &&
    qemu-img snapshot -c second v3.qcow2"
seed v2.qcow2 conv qcow2 v2.qcow2 -o compat=0.10,cluster_size=512
seed zlib.qcow2 conv qcow2 zlib.qcow2 -c -o cluster_size=4096
seed zstd.qcow2 conv qcow2 zstd.qcow2 -c -o cluster_size=8192,compression_type=zstd
seed sub.qcow2 sh -c "qemu-img convert -f raw -O qcow2 -o extended_l2=on,cluster_size=64k $RAW sub.qcow2 &&
    $(declare -f scatter); scatter qcow2 sub.qcow2"
seed top.qcow2 sh -c "qemu-img convert -f raw -O qcow2 -o cluster_size=4096 $RAW base.qcow2 &&
    qemu-img create -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 top.qcow2 &&
    $(declare -f scatter); scatter qcow2 top.qcow2"
seed ext.qcow2 sh -c "qemu-img create -f qcow2 -o data_file=ext.data,cluster_size=4096 ext.qcow2 6M &&
    $(declare -f scatter); scatter qcow2 ext.qcow2"
seed dyn.vhdx conv vhdx dyn.vhdx -o block_size=1M
seed fixed.vhdx conv vhdx fixed.vhdx -o subformat=fixed
seed dyn.vhd conv vpc dyn.vhd -o subformat=dynamic
seed fixed.vhd conv vpc fixed.vhd -o subformat=fixed
seed sparse.vmdk conv vmdk sparse.vmdk -o subformat=monolithicSparse
seed stream.vmdk conv vmdk stream.vmdk -o subformat=streamOptimized
seed split.vmdk conv vmdk split.vmdk -o subformat=twoGbMaxExtentSparse
seed dyn.vdi conv vdi dyn.vdi
seed top.qed sh -c "qemu-img convert -f raw -O qed -o cluster_size=4096 $RAW base.qed &&
    qemu-img create -f qed -b base.qed -F qed top.qed && $(declare -f scatter); scatter qed top.qed"
seed disk.raw cp "$RAW" disk.raw
seed gpt.raw sh -c "cp $RAW gpt.raw && printf 'label: gpt\nstart=2048,size=2048\nstart=4096,size=6144\n' |
    sfdisk -q gpt.raw"
seed lvm.raw python3 "$top_srcdir/tests/fuzz/lvmseed.py" lvm.raw
# VHDX children and a pending log, which qemu-img cannot make.
mkdir -p "$SEEDS/gen"
python3 "$top_srcdir/tests/vhdxgen.py" all "$SEEDS/gen" >/dev/null || hard_error "vhdxgen"
for f in child.avhdx dirty.vhdx dyn4k.vhdx; do
    mkdir -p "$SEEDS/$f.dir"
    cp "$SEEDS/gen/img/"* "$SEEDS/$f.dir/"
done
mkdir -p "$SEEDS/diff.vhd.dir"
python3 "$top_srcdir/tests/vhdgen.py" make "$SEEDS/diff.vhd.dir/base.vhd" --type dynamic --size 6M \
    --block-size 512K --write 0:64K:0x41 >/dev/null || hard_error "vhdgen base"
python3 "$top_srcdir/tests/vhdgen.py" make "$SEEDS/diff.vhd.dir/diff.vhd" --type diff --size 6M \
    --block-size 512K --parent "$SEEDS/diff.vhd.dir/base.vhd" --parent-name base.vhd \
    --locator 'W2ru:.\base.vhd' --locator 'W2ku:C:\vms\base.vhd' --write 4K:8K:0x42 >/dev/null ||
    hard_error "vhdgen diff"

for d in "$SEEDS"/*.dir; do
    name=$(basename "$d" .dir)
    # an undamaged seed has no problems, or its copies reach less code
    check "seed $name reads without problems" \
        sh -c '"$1" "$2" 2>/dev/null | grep -qx "problems: none"' - "$VMFS_INFO" "$d/$name"
    out=$WORK/$name.out
    # (its stderr holds every problem vmfs logs, then any sanitizer report)
    if timeout -k 5 $((LIMIT * ITER + 60)) "$FUZZ" "$d" "$name" "$ITER" "$SEED" "$LIMIT" \
        >"$out" 2>"$out.err" && ! grep -qE 'ERROR: [A-Za-z]+Sanitizer|runtime error:' "$out.err"; then
        ok "$(sed 's/^fuzz-image: //' "$out")"
    else
        not_ok "$name: damaged copies: $(grep -m1 -E 'ERROR|runtime error|hang|Assert|abort' "$out.err" ||
            tail -n 1 "$out.err")"
        grep -v '^vmfs: ' "$out.err" | head -n 60
        kept=$(ls "$d"/fuzz-* 2>/dev/null | head -n 1)
        if [ -n "$kept" ]; then
            echo "  the copy that failed: $kept (kept in the test's directory while it runs)"
            if [ -n "${FUZZ_KEEP:-}" ]; then
                mkdir -p "$FUZZ_KEEP" && cp -a "$d" "$FUZZ_KEEP/" && echo "  copied to $FUZZ_KEEP"
            fi
        fi
    fi
done

# The daemon over damaged copies: FUZZ_MOUNTED copies of every seed in one
# SOURCE (a directory per seed, with the files its seed needs), and every
# file of the tree read as a user would (the first MiBs, random places,
# SEEK_DATA/SEEK_HOLE) except fs/, which would start guest appliances.
# Reads may fail with EIO, nothing else; the daemon must answer every one,
# stay up and unmount cleanly with nothing in its log from the sanitizers.
if [ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] && command -v fusermount3 >/dev/null; then
    MANY=$WORK/many
    NMOUNT=${FUZZ_MOUNTED:-12}
    for d in "$SEEDS"/*.dir; do
        name=$(basename "$d" .dir)
        mkdir -p "$MANY/$name"
        cp -a "$d"/. "$MANY/$name/"
        "$FUZZ" -w "$MANY/$name" "$name" "$NMOUNT" $((SEED + 1)) >/dev/null 2>&1 ||
            hard_error "writing damaged copies of $name"
    done
    vmfs_mount "$MANY" "$WORK/mnt" || hard_error "mount"
    PID=$VMFS_PID
    cat >"$WORK/walk.py" <<'PY'
import errno, os, random, sys
random.seed(int(sys.argv[2]))
files = reads = failed = seeks = 0
for top, dirs, names in os.walk(sys.argv[1]):
    dirs[:] = [d for d in dirs if d != "fs"]
    for n in names:
        p = os.path.join(top, n)
        files += 1
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError as e:
            sys.exit("%s: open: %s" % (p, e))
        size = os.fstat(fd).st_size
        spots = [(o, 1 << 20) for o in range(0, min(size, 4 << 20), 1 << 20)]
        spots += [(random.randrange(size), random.randint(1, 1 << 17)) for _ in range(8) if size]
        for off, n in spots:
            reads += 1
            try:
                os.pread(fd, n, off)
            except OSError as e:
                if e.errno != errno.EIO:
                    sys.exit("%s: read at %d: %s" % (p, off, e))
                failed += 1
        off = 0
        for _ in range(256):
            try:
                off = os.lseek(fd, os.lseek(fd, off, os.SEEK_DATA), os.SEEK_HOLE)
                seeks += 1
            except OSError:
                break
        os.close(fd)
print("%d files, %d reads, %d failed with an error, %d data runs found"
      % (files, reads, failed, seeks))
PY
    out=$(t python3 "$WORK/walk.py" "$WORK/mnt" "$SEED" 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then
        ok "mounted: $(ls "$MANY" | wc -l) directories of damaged copies walked: $out"
    elif [ "$rc" -eq 124 ]; then
        not_ok "walking the mount of damaged copies took over $TMO s (VMFS_TEST_TIMEOUT)"
    else
        not_ok "walking the mount of damaged copies: ${out:0:300}"
    fi
    check "the daemon is still up after the walk" kill -0 "$PID"
    check "the daemon unmounts cleanly, no sanitizer report" vmfs_umount "$WORK/mnt"
else
    echo "note: no usable /dev/fuse here, so the damaged copies were not mounted"
fi

finish
