#!/usr/bin/env bash
# bench/guest-bench.sh -- guest filesystems: vmfs's NAME.d/fs/ against
# guestmount (libguestfs's own FUSE mount) on the same image, in one run.
#
#   guest-bench.sh [--vmfs PATH] [--tool PATH] [--keep]
#
# Measures, for each contender, from a fresh mount:
#   first ls     seconds from starting the mount to the first `ls p1/etc`
#                (the appliance start included); the median of ROUNDS (3)
#                alternating starts, as starts vary by seconds
#   large file   MB/s reading a 256 MiB file once (cat > /dev/null)
#   small files  MB/s and files/s of `find tree -type f | xargs cat` over
#                5,000 small files in 50 directories
# and prints a markdown table with the ratios.  Targets: vmfs at least 2x
# guestmount's throughput, and its first listing no slower than
# guestmount's mount time plus one second.
#
# vmfs is measured through its FUSE mount when that shows NAME.d/fs/; with
# --tool (tests/integration/guest-tool), or when the mount has no fs/ yet,
# through guest.h directly, without FUSE (the table says which).
#
# The image (ext4 in a GPT partition, ~700 MiB sparse) is built once with
# guestfish and kept in ${VMFS_BENCH_DIR:-~/.cache/vmfs-bench}/guest.
# Both contenders run the appliance in software emulation (force_tcg):
# where KVM works, set GUEST_BENCH_KVM=1 to let both use it.
set -u -o pipefail
export LC_ALL=C

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd -- "$HERE/.." && pwd)
BENCH_DIR=${VMFS_BENCH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfs-bench}/guest
VMFS_BIN=${VMFS:-$TOP/vmfs}
TOOL_BIN=
KEEP=0
TMO=900

while (($#)); do
    case $1 in
    --vmfs) VMFS_BIN=$2; shift 2 ;;
    --tool) TOOL_BIN=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "guest-bench.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

export LIBGUESTFS_BACKEND=direct
[ -n "${GUEST_BENCH_KVM:-}" ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg

START=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - START)) "$*" >&2; }
die() { log "error: $*"; exit 1; }
for t in guestfish guestmount guestunmount sfdisk fusermount3 python3; do
    command -v "$t" >/dev/null || die "$t is required"
done

RUN=$(mktemp -d "${TMPDIR:-/tmp}/guest-bench.XXXXXX") || die "mktemp"
PIDS=()
MNTS=()
cleanup() {
    local m p
    for m in "${MNTS[@]}"; do
        if awk -v m="$m" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; then
            timeout 30 fusermount3 -u "$m" 2>/dev/null || timeout 30 fusermount3 -uz "$m"
        fi
    done
    for p in "${PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null
    done
    if ((KEEP)); then log "kept $RUN"; else rm -rf --one-file-system "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# ---- the image ---------------------------------------------------------------

IMG=$BENCH_DIR/src/guest-bench.img
build_image() {
    local d=$BENCH_DIR/build i j
    rm -rf "$d" "$BENCH_DIR/src"
    mkdir -p "$d/root/etc" "$d/root/tree" "$BENCH_DIR/src"
    log "building the bench image (one guestfish session)"
    for ((i = 0; i < 60; i++)); do
        head -c $((200 + i * 37)) /dev/urandom | base64 >"$d/root/etc/conf$i"
    done
    for ((i = 0; i < 50; i++)); do
        mkdir -p "$d/root/tree/d$i"
        for ((j = 0; j < 100; j++)); do
            head -c $(((i * 100 + j) * 7919 % 7800 + 200)) /dev/urandom >"$d/root/tree/d$i/f$j"
        done
    done
    (cd "$d/root" && tar -cf "$d/root.tar" .)
    head -c 256M /dev/urandom >"$d/big.bin"
    truncate -s 760M "$IMG.tmp"
    echo "size=720MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4" |
        sfdisk -q --label gpt "$IMG.tmp" >/dev/null || die "sfdisk"
    timeout "$TMO" guestfish --format=raw -a "$IMG.tmp" -- run : \
        mkfs ext4 /dev/sda1 : mount /dev/sda1 / : tar-in "$d/root.tar" / : \
        upload "$d/big.bin" /big.bin : umount / >"$d/guestfish.log" 2>&1 ||
        { cat "$d/guestfish.log" >&2; die "guestfish failed"; }
    mv "$IMG.tmp" "$IMG"
    rm -rf "$d"
}
[ -f "$IMG" ] || build_image
IMGDIR=$(dirname "$IMG")

# ---- one contender -------------------------------------------------------------

# measure NAME ROOT: the three measurements under ROOT (the filesystem's
# root directory), first-ls time relative to T0.  Prints "ls big small files".
measure() {
    local root=$2 t1 t2 t3 t4 n bytes
    timeout "$TMO" ls "$root/etc" >/dev/null || { echo "fail"; return 1; }
    t1=$(now)
    timeout "$TMO" cat "$root/big.bin" >/dev/null || { echo "fail"; return 1; }
    t2=$(now)
    n=$( (cd "$root/tree" && timeout "$TMO" find . -type f | wc -l))
    bytes=$( (cd "$root/tree" && timeout "$TMO" find . -type f -printf '%s\n') | awk '{ s += $1 } END { print s }')
    t3=$(now)
    (cd "$root/tree" && timeout "$TMO" find . -type f -print0 | timeout "$TMO" xargs -0 cat >/dev/null)
    t4=$(now)
    echo "$(secs "$T0" "$t1") $(python3 -c "print(f'{268435456 / 1e6 / ($t2 - $t1):.1f}')") \
$(python3 -c "print(f'{$bytes / 1e6 / ($t4 - $t3):.2f} {$n / ($t4 - $t3):.0f}')")"
}

# guestmount: mount (it returns once the appliance runs), then measure
# (with "quick": only the time to the first listing).
run_guestmount() {
    local m=$RUN/gm
    mkdir -p "$m"
    T0=$(now)
    timeout "$TMO" guestmount --format=raw -a "$IMG" -m /dev/sda1 --ro "$m" ||
        die "guestmount failed"
    MNTS+=("$m")
    if [ "${1:-}" = quick ]; then
        timeout "$TMO" ls "$m/etc" >/dev/null || die "guestmount: ls failed"
        GM="$(secs "$T0" "$(now)")"
    else
        GM=$(measure guestmount "$m")
    fi
    timeout 60 guestunmount "$m" >/dev/null 2>&1 || fusermount3 -u "$m"
}

# vmfs through FUSE, or through guest-tool when the mount has no fs/.
run_vmfs() {
    local m=$RUN/vmfs i
    mkdir -p "$m"
    VMFS_HOW=fuse
    if [ -z "$TOOL_BIN" ] && [ -x "$VMFS_BIN" ]; then
        T0=$(now)
        "$VMFS_BIN" -f "$IMGDIR" "$m" >"$RUN/vmfs.log" 2>&1 </dev/null &
        local pid=$!
        PIDS+=("$pid")
        MNTS+=("$m")
        for ((i = 0; i < 300; i++)); do mounted "$m" && break; sleep 0.05; done
        mounted "$m" || die "vmfs did not mount"
        if [ "${1:-}" = quick ]; then
            timeout "$TMO" ls "$m/guest-bench.img.d/fs/p1/etc" >/dev/null 2>&1 &&
                VM="$(secs "$T0" "$(now)")"
        elif timeout "$TMO" ls "$m/guest-bench.img.d/fs/p1/etc" >/dev/null 2>&1; then
            VM=$(measure vmfs "$m/guest-bench.img.d/fs/p1")
        else
            VM=
        fi
        timeout 60 fusermount3 -u "$m"
        wait "$pid" 2>/dev/null
        [ -n "$VM" ] && return
        log "vmfs: the mount has no fs/ trees; measuring guest.h through guest-tool"
        TOOL_BIN=${TOOL_BIN:-$(dirname "$VMFS_BIN")/tests/integration/guest-tool}
    fi
    [ -x "$TOOL_BIN" ] || die "no vmfs to measure (build vmfs, or pass --tool)"
    VMFS_HOW="guest.h via guest-tool"
    run_tool "${1:-}"
}

# The same three measurements through guest-tool: ls, read the big file,
# read every small file (walk, then get each).
run_tool() {
    local in=$RUN/tool.in out=$RUN/tool.out t1 t2 t3 t4 n=0 bytes=0
    rm -f "$in" "$out"
    mkfifo "$in"
    log "vmfs (guest-tool): starting"
    T0=$(now)
    "$TOOL_BIN" "$IMGDIR" <"$in" >"$out" 2>"$RUN/tool.err" &
    PIDS+=("$!")
    exec 8>"$in"
    waitfor() { while [ "$(grep -c "^$1\$" "$out")" -lt "$2" ]; do sleep 0.02; done; }
    printf 'open\t%s\nls\tp1\t/etc\necho\tmark1\n' "$IMG" >&8
    waitfor mark1 1
    t1=$(now)
    if [ "${1:-}" = quick ]; then
        exec 8>&-
        wait "${PIDS[-1]}" 2>/dev/null
        rm -f "$in"
        VM=$(secs "$T0" "$t1")
        return
    fi
    printf 'get\tp1\t/big.bin\t%s\necho\tmark2\n' "$RUN/big.out" >&8
    waitfor mark2 1
    t2=$(now)
    printf 'walk\tp1\t/tree\necho\tmark3\n' >&8
    waitfor mark3 1
    local -a files
    mapfile -t files < <(awk -F'\t' '$2 == "f" { print $1 }' "$out")
    bytes=$(awk -F'\t' '$2 == "f" { s += $4 } END { print s }' "$out")
    n=${#files[@]}
    t3=$(now)
    local f
    for f in "${files[@]}"; do
        printf 'get\tp1\t/tree/%s\t/dev/null\n' "$f"
    done >&8
    printf 'echo\tmark4\n' >&8
    waitfor mark4 1
    t4=$(now)
    exec 8>&-
    VM="$(secs "$T0" "$t1") $(python3 -c "print(f'{268435456 / 1e6 / ($t2 - $t1):.1f}')") \
$(python3 -c "print(f'{$bytes / 1e6 / ($t4 - $t3):.2f} {$n / ($t4 - $t3):.0f}')")"
}

# The time to the first listing varies by seconds from one appliance start
# to the next on a busy machine: ROUNDS alternating starts, medians.
ROUNDS=${ROUNDS:-3}
GM_LS=()
VM_LS=()
for ((r = 1; r < ROUNDS; r++)); do
    log "round $r: guestmount"
    run_guestmount quick
    GM_LS+=("$GM")
    log "round $r: vmfs"
    run_vmfs quick
    VM_LS+=("${VM%% *}")
done
log "round $ROUNDS: guestmount, with the throughput measurements"
run_guestmount
GM_LS+=("${GM%% *}")
log "round $ROUNDS: vmfs, with the throughput measurements"
run_vmfs
VM_LS+=("${VM%% *}")
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

read -r _ gm_big gm_small gm_files <<<"$GM"
read -r _ vm_big vm_small vm_files <<<"$VM"
gm_ls=$(median "${GM_LS[@]}")
vm_ls=$(median "${VM_LS[@]}")
ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
cat <<EOF

guest filesystems: vmfs ($VMFS_HOW) vs guestmount, $(nproc) CPUs, ${LIBGUESTFS_BACKEND_SETTINGS:-KVM allowed}
first listing, each round (s): vmfs ${VM_LS[*]}; guestmount ${GM_LS[*]}

| measurement | vmfs | guestmount | ratio |
|---|---:|---:|---:|
| mount to first \`ls p1/etc\` (s, median of $ROUNDS) | $vm_ls | $gm_ls | $(python3 -c "print(f'{$vm_ls - $gm_ls:+.2f} s')") |
| read 256 MiB file (MB/s) | $vm_big | $gm_big | $(ratio "$vm_big" "$gm_big") |
| find \| xargs cat, 5,000 files (MB/s) | $vm_small | $gm_small | $(ratio "$vm_small" "$gm_small") |
| same (files/s) | $vm_files | $gm_files | $(ratio "$vm_files" "$gm_files") |
EOF
