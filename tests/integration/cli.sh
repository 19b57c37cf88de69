#!/bin/bash
# vmfs: the command line.  --help and --version succeed; every bad command
# line gives one line on stderr, a non-zero exit and no mount; vmfs
# daemonizes without -f; a single image works as SOURCE; vmfs's own -o
# options are accepted; mount.fuse3 and mount -t fuse.vmfs find vmfs on PATH.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io python3 jq
need_fuse
need_vmfs_info

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC" "$MNT" "$REF" "$WORK/full"
qemu-img create -q -f qcow2 "$SRC/disk.qcow2" 4M || hard_error "qemu-img create"
qemu-io -f qcow2 -c "write -P 0x3c 1M 64K" "$SRC/disk.qcow2" >/dev/null || hard_error "qemu-io"
ref_raw "$SRC/disk.qcow2" "$REF/disk" || hard_error "qemu-img convert"
echo "not an image" >"$WORK/notes.txt"
echo "something" >"$WORK/full/file"
: >"$WORK/plainfile"
# shellcheck disable=SC2154  # set by make check or lib.sh
VERSION=$(sed -n 's/^#define PACKAGE_VERSION "\(.*\)"$/\1/p' "$top_builddir/config.h" 2>/dev/null)

# ---- --help and --version ---------------------------------------------------
# succeeds_with PATTERN COMMAND...: exit 0 and stdout matches PATTERN.
succeeds_with() {
    local out
    out=$(t "${@:2}" 2>&1) || { echo "$* exited $?"; return 1; }
    grep -qE -- "$1" <<<"$out" || { echo "$*: output lacks /$1/:"; echo "$out"; return 1; }
}
check "vmfs --help exits 0 and shows the usage" succeeds_with 'SOURCE.*MOUNTPOINT' "$VMFS" --help
for o in allow_external_backing cache_size max_chain read_ahead; do
    check "vmfs --help documents -o $o" succeeds_with "$o" "$VMFS" --help
done
check "vmfs --version exits 0 and prints the version" succeeds_with "vmfs.*${VERSION:-[0-9]}" "$VMFS" --version
check "vmfs-info --help exits 0" succeeds_with 'IMAGE' "$VMFS_INFO" --help
check "vmfs-info --version exits 0" succeeds_with "${VERSION:-[0-9]}" "$VMFS_INFO" --version

# ---- bad command lines ----------------------------------------------------------
# refused DESCRIPTION ARG...: vmfs ARG... exits non-zero with exactly one
# line on stderr, mounts nothing and leaves no daemon behind.
refused() {
    local what=$1 status lines
    shift
    timeout -k 5 30 "$VMFS" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null
    status=$?
    lines=$(awk 'END { print NR }' "$WORK/err")
    if is_mounted "$MNT"; then
        track_mount "$MNT"
        vmfs_umount "$MNT" >/dev/null
        not_ok "$what: vmfs mounted"
        return
    fi
    if [ "$status" -eq 0 ] || [ "$status" -ge 124 ] || [ "$lines" -ne 1 ] || ! sanitizer_clean "$WORK/err"; then
        not_ok "$what: exit status $status, $lines lines on stderr (expected non-zero and 1):"
        sed 's/^/  | /' "$WORK/err"
        return
    fi
    ok "$what: exit $status, one line: $(cat "$WORK/err")"
}
refused "no arguments"
refused "only SOURCE" "$SRC"
refused "three operands" "$SRC" "$MNT" "$WORK/full"
refused "missing SOURCE" "$WORK/no-such-dir" "$MNT"
refused "SOURCE that is no image" "$WORK/notes.txt" "$MNT"
refused "MOUNTPOINT that does not exist" "$SRC" "$WORK/no-such-mnt"
refused "MOUNTPOINT that is not empty" "$SRC" "$WORK/full"
refused "MOUNTPOINT that is a file" "$SRC" "$WORK/plainfile"
refused "unknown long option" --no-such-option "$SRC" "$MNT"
refused "unknown short option" -Y "$SRC" "$MNT"
refused "unknown -o option" -o no_such_option "$SRC" "$MNT"
refused "-o cache_size without a size" -o cache_size=lots "$SRC" "$MNT"
refused "-o cache_size with a bad suffix" -o cache_size=12Q "$SRC" "$MNT"
refused "-o read_ahead not a size" -o read_ahead=fast "$SRC" "$MNT"
refused "-o read_ahead above 1G" -o read_ahead=2G "$SRC" "$MNT"
refused "-o max_read too small" -o max_read=512 "$SRC" "$MNT"
refused "-o max_read above 1 MiB" -o max_read=4194304 "$SRC" "$MNT"
refused "-o max_chain not a number" -o max_chain=deep "$SRC" "$MNT"
refused "-o max_chain negative" -o max_chain=-1 "$SRC" "$MNT"
refused "missing SOURCE with -f" -f "$WORK/no-such-dir" "$MNT"
lists_empty() { [ -z "$(ls -A "$1")" ]; }
check "nothing is left in the mount point" lists_empty "$MNT"

# vmfs-info: a missing file and a non-image fail with one line on stderr.
info_refused() {
    local status lines
    t "$VMFS_INFO" "$@" >"$WORK/out" 2>"$WORK/err"
    status=$?
    lines=$(awk 'END { print NR }' "$WORK/err")
    if [ "$status" -eq 0 ] || [ "$status" -ge 124 ] || [ "$lines" -ne 1 ]; then
        echo "exit $status, $lines lines on stderr:"
        cat "$WORK/err"
        return 1
    fi
}
check "vmfs-info on a missing file: non-zero, one line" info_refused "$WORK/no-such.qcow2"
check "vmfs-info on a non-image: non-zero, one line" info_refused "$WORK/notes.txt"
check "vmfs-info with an unknown option: non-zero, one line" info_refused --no-such-option "$SRC/disk.qcow2"
check "vmfs-info prints the report" succeeds_with 'virtual size: 4194304 bytes' "$VMFS_INFO" "$SRC/disk.qcow2"
json_out() { t "$VMFS_INFO" --json "$SRC/disk.qcow2" | jq -e '.virtual_size == 4194304' >/dev/null; }
check "vmfs-info --json prints JSON" json_out

# ---- mounting ----------------------------------------------------------------------
reads_right() { same_file "$MNT/disk.qcow2" "$REF/disk"; }

# Daemonized: vmfs returns once mounted, serves, and exits on unmount.
daemonized() {
    t "$VMFS" "$@" "$SRC" "$MNT" || { echo "vmfs exited $?"; return 1; }
    is_mounted "$MNT" || { echo "not mounted after vmfs returned"; return 1; }
    track_mount "$MNT"
}
if check "vmfs without -f daemonizes and returns 0 once mounted" daemonized; then
    pid=$(daemon_pid "$MNT")
    check "the daemon runs in the background" test -n "$pid"
    check "the daemonized vmfs serves reads" reads_right
    check "fusermount3 -u unmounts it" vmfs_umount "$MNT"
    check "the daemon exits after unmount" wait_gone "${pid:-0}" 10
fi

# Foreground with options, some after the operands as mount.fuse3 passes them.
for opts in "-s" "-o max_read=65536" "-o max_read=1048576" "-o cache_size=1M" "-o cache_size=64K,max_chain=2" "-o allow_external_backing" \
    "-o max_chain=2" "-d"; do
    # shellcheck disable=SC2086
    if vmfs_mount "$SRC" "$MNT" $opts; then
        check "vmfs -f $opts: reads right" reads_right
        check "vmfs -f $opts: unmounts cleanly" vmfs_umount "$MNT"
    else
        not_ok "vmfs -f $opts mounts"
    fi
done
check "-d logs FUSE requests on stderr" test -s "$VMFS_LOG"

# The mount's kernel read-ahead window (root only: it lives in sysfs).
# read_ahead_is KB: the bdi of the mount at $MNT reads ahead KB KiB.
read_ahead_is() {
    local dev kb i
    dev=$(mountpoint -d "$MNT") || return 1
    for ((i = 0; i < 50; i++)); do # set by the daemon once the mount answers
        kb=$(cat "/sys/class/bdi/$dev/read_ahead_kb") || return 1
        [ "$kb" = "$1" ] && return 0
        sleep 0.1
    done
    echo "read_ahead_kb of $dev is $kb, expected $1"
    return 1
}
# with_option OPT WHAT CMD...: mounted with -o OPT (none when empty), CMD
# succeeds and the disk reads right.
with_option() {
    local opt=$1 what=$2
    shift 2
    if vmfs_mount "$SRC" "$MNT" ${opt:+-o "$opt"}; then
        check "vmfs ${opt:-(default)}: $what" "$@"
        check "vmfs ${opt:-(default)}: reads right" reads_right
        vmfs_umount "$MNT"
    else
        not_ok "vmfs ${opt:-(default)} mounts"
    fi
}
if [ "$(id -u)" = 0 ] && [ -d /sys/class/bdi ]; then
    for ra in "":4096 read_ahead=1M:1024 read_ahead=512K:512; do
        with_option "${ra%%:*}" "the mount reads ahead ${ra##*:} KiB" read_ahead_is "${ra##*:}"
    done
    # The kernel may queue 32 requests of the mount, congested at 24
    # (where the fuse control file system shows them).
    if vmfs_mount "$SRC" "$MNT"; then
        ctl=/sys/fs/fuse/connections/$(mountpoint -d "$MNT" | cut -d: -f2)
        if [ -r "$ctl/max_background" ]; then
            check "vmfs: 32 background requests" test "$(cat "$ctl/max_background")" = 32
            check "vmfs: congestion at 24" test "$(cat "$ctl/congestion_threshold")" = 24
        else
            echo "# max_background: not checked (no fusectl at /sys/fs/fuse/connections)"
        fi
        vmfs_umount "$MNT"
    else
        not_ok "vmfs mounts"
    fi
    # A disk that is mostly holes is opened with the kernel's 128 KiB window
    # (read ahead past a data extent is zeros a hole-aware copy never
    # wants); a disk that is mostly data with the deep one.  A window set by
    # hand holds for both.
    mkdir -p "$WORK/ra"
    truncate -s 64M "$WORK/ra/sparse.raw"
    head -c 1M /dev/urandom | dd of="$WORK/ra/sparse.raw" bs=1M seek=9 conv=notrunc status=none
    head -c 4M /dev/urandom >"$WORK/ra/dense.raw"
    # opened_with NAME KB: a read of NAME leaves the window at KB KiB.
    opened_with() {
        head -c 4096 "$MNT/$1" >/dev/null || return 1
        read_ahead_is "$2"
    }
    for ra in "":4096:128 read_ahead=1M:1024:1024; do
        IFS=: read -r opt deep shallow <<<"$ra"
        if vmfs_mount "$WORK/ra" "$MNT" ${opt:+-o "$opt"}; then
            check "vmfs ${opt:-(default)}: the mount starts reading ahead $deep KiB" read_ahead_is "$deep"
            check "vmfs ${opt:-(default)}: a disk mostly holes reads ahead $shallow KiB" opened_with sparse.raw "$shallow"
            check "vmfs ${opt:-(default)}: a disk mostly data reads ahead $deep KiB" opened_with dense.raw "$deep"
            check "vmfs ${opt:-(default)}: the sparse disk reads right" same_file "$MNT/sparse.raw" "$WORK/ra/sparse.raw"
            vmfs_umount "$MNT"
        else
            not_ok "vmfs ${opt:-(default)} mounts a directory of raw disks"
        fi
    done
    # read_ahead=0 leaves the kernel's window, whatever this kernel's is.
    if vmfs_mount "$SRC" "$MNT" -o read_ahead=0; then
        check "vmfs -o read_ahead=0: reads right" reads_right
        check_not "vmfs -o read_ahead=0: the window is not vmfs's default" read_ahead_is 4096
        vmfs_umount "$MNT"
    else
        not_ok "vmfs -o read_ahead=0 mounts"
    fi
else
    echo "# read_ahead: not checked (needs root to set a mount's read-ahead)"
fi
# Worker threads: twice the CPUs (4 to 16) unless -o max_threads says.
# threads_at_most N: after 16 readers at once, the daemon has at most N
# threads besides its main one.
threads_at_most() {
    local i n pids=()
    for ((i = 0; i < 16; i++)); do
        dd if="$MNT/disk.qcow2" of=/dev/null bs=4k count=256 skip=$((i * 16)) iflag=direct \
            status=none &
        pids+=($!)
    done
    wait "${pids[@]}" || { echo "a reader failed"; return 1; }
    local max=$1
    set -- "/proc/$VMFS_PID/task"/*
    n=$(($# - 1))
    [ "$n" -le "$max" ] || { echo "$n worker threads, expected at most $max"; return 1; }
}
cpus=$(nproc)
want=$((2 * cpus < 4 ? 4 : 2 * cpus > 16 ? 16 : 2 * cpus))
for mt in "":$want max_threads=2:2; do
    with_option "${mt%%:*}" "at most ${mt##*:} threads serve 16 readers" threads_at_most "${mt##*:}"
done

fg_after() {
    "$VMFS" "$SRC" "$MNT" -o ro -f >"$WORK/fg.log" 2>&1 </dev/null &
    local pid=$! i
    for ((i = 0; i < 300; i++)); do
        is_mounted "$MNT" && break
        sleep 0.1
    done
    MNTS+=("$MNT")
    PIDS+=("$pid")
    LOGS+=("$WORK/fg.log")
    is_mounted "$MNT"
}
check "options after the operands (SOURCE MOUNTPOINT -o ro -f)" fg_after
check "  ... reads right" reads_right
check "  ... unmounts cleanly" vmfs_umount "$MNT"

# SIGTERM while a file and a directory are open: the kernel never sends
# their release, and the daemon still exits 0 with nothing leaked (the
# sanitizer builds report leaks in the log and the exit status).
term_while_open() {
    local ok=0
    exec 3<"$MNT/disk.qcow2" 4<"$MNT/disk.qcow2.d/info" 5<"$MNT/disk.qcow2.d" || return 1
    head -c 4096 <&3 >/dev/null || ok=1
    kill -TERM "$VMFS_PID"
    wait_gone "$VMFS_PID" 30 || { echo "vmfs still runs 30 s after SIGTERM"; ok=1; }
    exec 3<&- 4<&- 5<&-
    return $ok
}
if vmfs_mount "$SRC" "$MNT"; then
    check "SIGTERM with files open: vmfs exits" term_while_open
    check "  ... with status 0 and a clean log" vmfs_umount "$MNT"
else
    not_ok "vmfs mounts"
fi

# A single image as SOURCE: the mount shows that image alone.
if vmfs_mount "$SRC/disk.qcow2" "$MNT"; then
    check "a single image as SOURCE shows NAME and NAME.d" \
        diff -u <(printf '%s\n' disk.qcow2 disk.qcow2.d) <(t ls -A "$MNT" | sort)
    check "a single image as SOURCE reads right" reads_right
    check "a single image as SOURCE unmounts cleanly" vmfs_umount "$MNT"
else
    not_ok "vmfs -f SOURCE-IMAGE MOUNTPOINT mounts"
fi

# ---- mount.fuse3 and mount -t fuse.vmfs -----------------------------------------------
via_helper() {  # via_helper COMMAND...: mount with a helper that runs `vmfs` from PATH
    PATH="$top_builddir:$PATH" t "$@" || { echo "$* exited $?"; return 1; }
    is_mounted "$MNT" || { echo "$*: nothing mounted"; return 1; }
    track_mount "$MNT"
    reads_right && vmfs_umount "$MNT"
}
if ! command -v mount.fuse3 >/dev/null; then
    echo "mount.fuse3 not found: skipping the mount helper checks"
elif [ "$(id -u)" != 0 ]; then
    echo "not root: skipping the mount helper checks"
else
    check "mount.fuse3 vmfs#SOURCE MOUNTPOINT" via_helper mount.fuse3 "vmfs#$SRC" "$MNT"
    check "mount.fuse3 SOURCE MOUNTPOINT -t vmfs -o ro" via_helper mount.fuse3 "$SRC" "$MNT" -t vmfs -o ro
    # mount(8) runs its helpers with a standard PATH of its own, so it finds
    # only an installed vmfs; use it only when that is the one under test.
    installed=$(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        sh -c 'command -v vmfs' || true)
    if [ -n "$installed" ] && cmp -s "$installed" "$VMFS"; then
        check "mount -t fuse.vmfs SOURCE MOUNTPOINT" via_helper mount -t fuse.vmfs "$SRC" "$MNT"
        check "mount -t fuse vmfs#SOURCE MOUNTPOINT -o ro" via_helper mount -t fuse "vmfs#$SRC" "$MNT" -o ro
    else
        echo "vmfs under test is not installed on the standard PATH: skipping mount -t fuse.vmfs"
    fi
fi

check_not "nothing is left mounted" is_mounted "$MNT"
finish
