#!/usr/bin/env bash
# bench/nbd-bench.sh -- an NBD export as SOURCE: vmfs against nbdfuse on the
# same qemu-nbd export, interleaved in one run.
#
#   nbd-bench.sh --vmfs PATH [--image IMAGE] [--rounds N]
#
# qemu-nbd serves IMAGE (default: the benchmark's 2 GiB qcow2 in
# ${VMFS_BENCH_DIR:-~/.cache/vmfs-bench}/images, made by
# /work/shared/bench/run.sh or any qcow2 you name) read-only on a private
# Unix socket, shared by both clients.  Each round measures, for each
# contender in turn:
#   seq 1M    MB/s of dd bs=1M over the first GiB, the view's cache dropped
#   rand j1   IOPS of fio randread 4k, psync, O_DIRECT, 1 job, 3 s
#   rand j4   the same with 4 jobs
# and prints a markdown table of the medians with vmfs / nbdfuse.  The
# target: vmfs within 90% of nbdfuse (ratio >= 0.9) in every row.
set -u -o pipefail
export LC_ALL=C

VMFS=
IMAGE=${VMFS_BENCH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfs-bench}/images/disk.qcow2
ROUNDS=3
while (($#)); do
    case $1 in
    --vmfs) VMFS=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "nbd-bench.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ -x $VMFS ]] || { echo "nbd-bench.sh: --vmfs PATH (an executable) is needed" >&2; exit 2; }
[[ -r $IMAGE ]] || { echo "nbd-bench.sh: cannot read $IMAGE" >&2; exit 2; }
for t in qemu-nbd nbdfuse fio dd qemu-img; do
    command -v "$t" >/dev/null || { echo "nbd-bench.sh: $t is not installed" >&2; exit 2; }
done
FMT=$(qemu-img info --output=json "$IMAGE" | sed -n 's/.*"format": "\([^"]*\)".*/\1/p' | head -n 1)

W=$(mktemp -d /tmp/vmfs-nbd-bench.XXXXXX)
SOCK=$W/sock
mkdir -p "$W/nbdfuse" "$W/vmfs"
PIDS=()
cleanup() {
    fusermount3 -u "$W/vmfs" 2>/dev/null
    fusermount3 -u "$W/nbdfuse" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT INT TERM

qemu-nbd -r -t -e 16 -x disk -k "$SOCK" -f "$FMT" --cache=writeback "$IMAGE" &
PIDS+=($!)
for ((i = 0; i < 50; i++)); do [[ -S $SOCK ]] && break; sleep 0.1; done
URI="nbd+unix:///disk?socket=$SOCK"
nbdfuse "$W/nbdfuse" "$URI" &
PIDS+=($!)
"$VMFS" -f "$URI" "$W/vmfs" 2>"$W/vmfs.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    mountpoint -q "$W/nbdfuse" && mountpoint -q "$W/vmfs" && break
    sleep 0.1
done
declare -A FILE=([nbdfuse]=$W/nbdfuse/nbd [vmfs]=$W/vmfs/disk)
for c in nbdfuse vmfs; do
    [[ -r ${FILE[$c]} ]] || { echo "nbd-bench.sh: $c did not mount the export" >&2; exit 1; }
done
cat "$IMAGE" >/dev/null # the server reads from the page cache

declare -A R
seq_mbs() { # FILE: MB/s of dd over the first GiB, the view's cache dropped
    dd if="$1" iflag=nocache count=0 status=none 2>/dev/null
    dd if="$1" of=/dev/null bs=1M count=1024 2>&1 | awk '/copied/ {
        for (i = 1; i <= NF; i++) if ($i == "copied,") s = $(i + 1)
        printf "%.0f", 1073741824 / s / 1e6 }'
}
iops() { # FILE JOBS
    fio --name=r --filename="$1" --readonly --rw=randread --bs=4k --ioengine=psync \
        --direct=1 --numjobs="$2" --group_reporting --runtime=3 --time_based \
        --output-format=terse 2>/dev/null | awk -F';' '{ printf "%.0f", $8 }'
}
for ((r = 0; r < ROUNDS; r++)); do
    order=(nbdfuse vmfs)
    ((r % 2)) && order=(vmfs nbdfuse)
    for c in "${order[@]}"; do
        R[$c,seq,$r]=$(seq_mbs "${FILE[$c]}")
        R[$c,j1,$r]=$(iops "${FILE[$c]}" 1)
        R[$c,j4,$r]=$(iops "${FILE[$c]}" 4)
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "NBD export of $(basename "$IMAGE") ($FMT) through qemu-nbd, $ROUNDS rounds, medians"
echo
echo "| workload | unit | nbdfuse | vmfs | vmfs / nbdfuse |"
echo "|---|---|---|---|---|"
for w in seq:MB/s j1:IOPS j4:IOPS; do
    k=${w%%:*} u=${w#*:}
    a=() b=()
    for ((r = 0; r < ROUNDS; r++)); do a+=("${R[nbdfuse,$k,$r]:-0}"); b+=("${R[vmfs,$k,$r]:-0}"); done
    ma=$(median "${a[@]}") mb=$(median "${b[@]}")
    case $k in seq) name="seq read, dd bs=1M" ;; j1) name="rand 4k, 1 job" ;; j4) name="rand 4k, 4 jobs" ;; esac
    echo "| $name | $u | $ma | $mb | $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.2fx", a ? b / a : 0 }') |"
done
