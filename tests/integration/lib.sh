# shellcheck shell=bash
# vmfs integration tests: shared helpers.  Each test sources this first:
#
#   . "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"
#
# make check sets top_srcdir, top_builddir, VMFS and VMFS_INFO; run by hand
# from the source tree the defaults below find an in-tree build.
#
# A test prints one "ok: …" or "FAIL: …" line per check, then finish()
# unmounts, prints "NAME: N passed, N failed" and exits 0 or 1.  A missing
# tool exits 77 (skip, unless VMFS_TEST_NO_SKIP is set); a missing vmfs
# build exits 99 (hard error).
# Everything happens in a private directory $WORK that the EXIT trap removes
# after unmounting every vmfs the test started and killing its daemon.
# Every command that touches a mount runs under t() (a timeout), so a hung
# daemon fails the test instead of hanging the run.

set -u
set -o pipefail

lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${top_srcdir:=$(cd "$lib_dir/../.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${VMFS:=$top_builddir/vmfs}"
: "${VMFS_INFO:=$top_builddir/vmfs-info}"
PROBE="$lib_dir/probe.py"
TEST=$(basename "$0" .sh)
TMO=${VMFS_TEST_TIMEOUT:-60}    # seconds for one command on a mount
export LC_ALL=C

npass=0
nfail=0
MNTS=()     # mount points started by vmfs_mount, "" once unmounted
PIDS=()     # their daemons
LOGS=()     # their stdout and stderr

ok() { npass=$((npass + 1)); echo "ok: $*"; }
not_ok() { nfail=$((nfail + 1)); echo "FAIL: $*"; }
# skip REASON: exit 77, or, where skipping would hide that nothing ran
# (VMFS_TEST_NO_SKIP set, as CI sets it when /dev/fuse exists), fail hard.
skip() {
    if [ -n "${VMFS_TEST_NO_SKIP:-}" ]; then
        echo "ERROR: cannot run ($*), and VMFS_TEST_NO_SKIP forbids skipping"
        exit 99
    fi
    echo "SKIP: $*"
    exit 77
}
hard_error() { echo "ERROR: $*"; exit 99; }

# check DESCRIPTION COMMAND [ARG...]: one check, passed when COMMAND succeeds.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

# check_not DESCRIPTION COMMAND [ARG...]: passed when COMMAND fails.
check_not() {
    local what=$1
    shift
    if "$@"; then not_ok "$what"; else ok "$what"; fi
}

# t COMMAND [ARG...]: COMMAND under the per-command timeout.
t() { timeout -k 5 "$TMO" "$@"; }

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || skip "$tool not found"
    done
}

# need_fuse: skip unless FUSE mounts can work here; fail hard without vmfs.
need_fuse() {
    [ -c /dev/fuse ] || skip "/dev/fuse missing"
    if [ ! -r /dev/fuse ] || [ ! -w /dev/fuse ]; then skip "/dev/fuse not accessible"; fi
    need fusermount3
    [ -x "$VMFS" ] || hard_error "$VMFS is not built"
}

need_vmfs_info() {
    [ -x "$VMFS_INFO" ] || hard_error "$VMFS_INFO is not built"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmfs-$TEST.XXXXXX") || hard_error "mktemp failed"
WORK=$(cd -P "$WORK" && pwd)

# is_mounted DIR: DIR is a mount point (read from the kernel's table, so it
# never touches a possibly hung file system).
is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# vmfs_mount SOURCE MOUNTPOINT [VMFS-OPTION...]: start vmfs -f in the
# background and wait until it has mounted.  Sets VMFS_PID and VMFS_LOG.
# Fails (showing the daemon's log) if it does not mount within 30 s.
vmfs_mount() {
    local src=$1 mnt=$2 i
    shift 2
    mkdir -p "$mnt"
    VMFS_LOG="$WORK/vmfs-${#PIDS[@]}.log"
    "$VMFS" -f "$@" "$src" "$mnt" >"$VMFS_LOG" 2>&1 </dev/null &
    VMFS_PID=$!
    MNTS+=("$mnt")
    PIDS+=("$VMFS_PID")
    LOGS+=("$VMFS_LOG")
    for ((i = 0; i < 300; i++)); do
        is_mounted "$mnt" && return 0
        kill -0 "$VMFS_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "vmfs did not mount $mnt (vmfs -f $* $src $mnt); its output:"
    sed 's/^/  | /' "$VMFS_LOG"
    is_mounted "$mnt" && timeout 30 fusermount3 -uz "$mnt"
    kill -KILL "$VMFS_PID" 2>/dev/null
    wait "$VMFS_PID" 2>/dev/null
    MNTS[${#MNTS[@]} - 1]=""
    return 1
}

# sanitizer_clean LOG: the log holds no AddressSanitizer/UBSan report.
sanitizer_clean() {
    if grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$1" 2>/dev/null; then
        echo "sanitizer report in $1:"
        sed 's/^/  | /' "$1"
        return 1
    fi
    return 0
}

# wait_gone PID SECONDS: wait for PID to exit; non-zero if it does not.
wait_gone() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# vmfs_umount MOUNTPOINT: unmount, wait for the daemon; succeeds only when
# the daemon exits with status 0 and logged no sanitizer report.
vmfs_umount() {
    local mnt=$1 i idx=-1 pid log status
    for i in "${!MNTS[@]}"; do
        [ "${MNTS[$i]}" = "$mnt" ] && idx=$i
    done
    if [ "$idx" -lt 0 ]; then
        echo "vmfs_umount: $mnt was not mounted by this test"
        return 1
    fi
    pid=${PIDS[$idx]}
    log=${LOGS[$idx]}
    MNTS[idx]=""
    if is_mounted "$mnt" && ! timeout 30 fusermount3 -u "$mnt"; then
        echo "fusermount3 -u $mnt failed; unmounting lazily"
        timeout 30 fusermount3 -uz "$mnt" || umount -l "$mnt"
    fi
    [ -n "$pid" ] || return 0
    if ! wait_gone "$pid" 30; then
        echo "vmfs (pid $pid) still runs 30 s after unmount; killing it"
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 1
    fi
    [ "$log" != - ] || return 0    # daemonized: not our child, no status
    wait "$pid"
    status=$?
    if [ "$status" -ne 0 ]; then
        echo "vmfs (pid $pid) exited with status $status; its output:"
        sed 's/^/  | /' "$log"
        return 1
    fi
    sanitizer_clean "$log"
}

# daemon_pid MOUNTPOINT: the pid of the vmfs daemon serving MOUNTPOINT
# (found by its command line), empty if there is none.
daemon_pid() {
    local p arg
    for p in /proc/[0-9]*; do
        [ "$(basename "$(readlink "$p/exe" 2>/dev/null)")" = vmfs ] || continue
        while IFS= read -r -d '' arg; do
            if [ "$arg" = "$1" ]; then
                basename "$p"
                return 0
            fi
        done <"$p/cmdline" 2>/dev/null
    done
}

# track_mount MOUNTPOINT: have finish() and the EXIT trap unmount a mount
# that vmfs made while daemonizing (through mount.fuse3 or without -f).
track_mount() {
    MNTS+=("$1")
    PIDS+=("$(daemon_pid "$1")")
    LOGS+=(-)
}

# daemon_alive: the most recently mounted vmfs still runs and is mounted.
daemon_alive() {
    kill -0 "$VMFS_PID" 2>/dev/null && is_mounted "${MNTS[${#MNTS[@]} - 1]}"
}

cleanup() {
    local i
    set +e
    for i in "${!MNTS[@]}"; do
        [ -n "${MNTS[$i]}" ] || continue
        if is_mounted "${MNTS[$i]}"; then
            timeout 30 fusermount3 -u "${MNTS[$i]}" 2>/dev/null ||
                timeout 30 fusermount3 -uz "${MNTS[$i]}" 2>/dev/null ||
                umount -l "${MNTS[$i]}" 2>/dev/null
        fi
        [ -n "${PIDS[$i]}" ] || continue
        if ! wait_gone "${PIDS[$i]}" 10; then
            kill -TERM "${PIDS[$i]}" 2>/dev/null
            wait_gone "${PIDS[$i]}" 5 || kill -KILL "${PIDS[$i]}" 2>/dev/null
        fi
    done
    if [ -n "${VMFS_TEST_KEEP:-}" ]; then
        echo "kept $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# finish: unmount what is still mounted (a check each), print the tally,
# exit 1 if any check failed.
finish() {
    local i
    for i in "${!MNTS[@]}"; do
        [ -n "${MNTS[$i]}" ] || continue
        check "vmfs at ${MNTS[$i]} unmounts and exits cleanly" vmfs_umount "${MNTS[$i]}"
    done
    echo "$TEST: $npass passed, $nfail failed"
    [ "$nfail" -eq 0 ] || exit 1
    exit 0
}

# ---- oracles ---------------------------------------------------------------

# ref_raw IMAGE OUT [CONVERT-OPTION...]: qemu-img convert -O raw of IMAGE.
# Runs in the image's directory: qemu 7.2 resolves a relative external data
# file from its working directory (vmfs resolves it from the image's).
ref_raw() {
    local img=$1 out=$2
    shift 2
    (cd "$(dirname "$img")" && qemu-img convert -U "$@" -O raw "$(basename "$img")" "$out")
}

# qemu_map IMAGE OUT: qemu-img map --output=json of IMAGE into OUT.
qemu_map() {
    (cd "$(dirname "$1")" && qemu-img map -U --output=json "$(basename "$1")") >"$2"
}

# qemu_vsize IMAGE: the virtual size qemu-img reports.
qemu_vsize() {
    (cd "$(dirname "$1")" && qemu-img info -U --output=json "$(basename "$1")") |
        jq -r '."virtual-size"'
}

# same_file A B: byte-identical (cmp names the first difference).
same_file() { t cmp "$1" "$2"; }

# size_is FILE BYTES
size_is() {
    local got
    got=$(t stat -c %s "$1") || return 1
    [ "$got" = "$2" ] || { echo "$1: st_size $got, expected $2"; return 1; }
}

# sha FILE: the file's sha256.
sha() { t sha256sum "$1" | cut -d' ' -f1; }

# src_state DIR: every regular file under DIR with size, mtime, ctime and
# sha256, to prove vmfs left SOURCE untouched.
src_state() {
    (cd "$1" && find . -type f -print0 | sort -z |
        xargs -0 -r stat -c '%n %s %y %z' && find . -type f -print0 | sort -z |
        xargs -0 -r sha256sum)
}

# unchanged DIR STATEFILE: DIR still matches what src_state saved.
unchanged() {
    src_state "$1" | diff -u "$2" - || { echo "SOURCE changed"; return 1; }
}

# probe SUBCOMMAND ARG...: the Python helper, under the timeout.  The
# system's python3 when there is one: it starts faster than most wrappers.
PYTHON=python3
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
probe() { t "$PYTHON" "$PROBE" "$@"; }

# jq_true FILE FILTER: the filter is true of the JSON file.
jq_true() {
    t jq -e "$2" "$1" >/dev/null || { echo "$1: not true: $2"; return 1; }
}

# json_valid FILE
json_valid() { t jq empty "$1"; }

# pat N: a non-zero pattern byte, different per N.
pat() { printf '0x%02x' $(($1 % 251 + 1)); }

# read_fails FILE OFFSET LENGTH: reading there fails with EIO.
read_fails() { probe ranges "$1" /dev/null "eio:$2:$3"; }

# check_absent PATH: nothing by that name.
check_absent() {
    t test -e "$1"
    [ $? -eq 1 ] || { echo "$1 exists"; return 1; }
}

# problem_named INFO.JSON REGEX: the image is damaged and one of its
# problems matches REGEX (case-insensitive).
problem_named() {
    jq_true "$1" ".status == \"damaged\" and any(.problems[]; test(\"$2\"; \"i\"))"
}

# jq_checks FILE WHAT NAME FILTER [NAME FILTER...]: one check "WHAT: NAME"
# per filter, all evaluated in a single jq run over the JSON FILE; a check
# passes when its filter yields only true.
jq_checks() {
    local file=$1 what=$2 prog="" out i
    local -a names=() filters=() res=()
    shift 2
    while [ $# -ge 2 ]; do
        names+=("$1")
        filters+=("$2")
        prog+="(try ([$2] | length > 0 and all) catch false),"
        shift 2
    done
    if ! out=$(t jq -r "[${prog%,}] | .[]" "$file" 2>&1); then
        for i in "${!names[@]}"; do
            not_ok "$what: ${names[$i]} ($file: $out)"
        done
        return
    fi
    mapfile -t res <<<"$out"
    for i in "${!names[@]}"; do
        if [ "${res[$i]:-}" = true ]; then
            ok "$what: ${names[$i]}"
        else
            not_ok "$what: ${names[$i]} (not true of $file: ${filters[$i]})"
        fi
    done
}
