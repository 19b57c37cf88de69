#!/bin/bash
# vmfs: an NBD export as SOURCE.  Against qemu-nbd (a qcow2 image, served
# decoded) and nbdkit (memory, a sparse raw file, a qcow2 file served
# undecoded) on private Unix sockets: the disk is named after the export
# (or "nbd"), its bytes equal `qemu-img convert -O raw`, its holes
# (SEEK_DATA/SEEK_HOLE) match the server's block status (nbdinfo --map and
# qemu-img map of the export), content in a known format is decoded; when
# the server goes away reads fail with EIO and the daemon stays up, and
# once it is back on the same socket reads work again without remounting.
# nbdkit and nbdinfo are optional: without them their checks are left out.
# shellcheck source=tests/integration/lib.sh disable=SC1091,SC2317
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need qemu-img qemu-io qemu-nbd python3 jq
need_fuse

IMG=$WORK/img
mkdir -p "$IMG"
SERVERS=()      # pid files of the servers this test started

stop_servers() {
    local f p
    for f in "${SERVERS[@]}"; do
        p=$(cat "$f" 2>/dev/null) || continue
        kill "$p" 2>/dev/null
    done
}
trap 'stop_servers; cleanup' EXIT

# qnbd SOCK PIDFILE ARG...: qemu-nbd read-only on SOCK, in the background
# (taking more than one client, so that nbdinfo can ask it too).
qnbd() {
    local sock=$1 pidf=$2
    shift 2
    rm -f "$sock"
    qemu-nbd -r -k "$sock" --shared=8 --persistent --fork --pid-file="$pidf" "$@" ||
        hard_error "qemu-nbd $*"
    SERVERS+=("$pidf")
}

# kill_server PIDFILE: stop it and wait until it is gone.
kill_server() {
    local p
    p=$(cat "$1") || return 1
    kill "$p" 2>/dev/null
    wait_gone "$p" 10 || kill -KILL "$p" 2>/dev/null
    wait_gone "$p" 5
}

# uncached_read FILE OFF LEN: pread past the page cache; prints "ok" or
# the errno.
uncached_read() {
    t python3 - "$@" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
try:
    b = os.pread(fd, int(sys.argv[3]), int(sys.argv[2]))
    print("ok" if len(b) == int(sys.argv[3]) else "short")
except OSError as e:
    print(e.errno)
EOF
}

# drop_cache FILE: forget FILE's pages, so that the next read asks vmfs.
drop_cache() {
    t python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

# nbd_data_map URI OUT: the export's data extents ("START END" lines,
# merged) from nbdinfo --map (or qemu-img map when nbdinfo is missing).
nbd_data_map() {
    if command -v nbdinfo >/dev/null 2>&1; then
        t nbdinfo --map "$1" | awk '{ print $1, $2, ($3 % 4 >= 2) ? "zero" : "data" }'
    else
        t qemu-img map --output=json -f raw "$1" |
            jq -r '.[] | "\(.start) \(.length) \(if .data then "data" else "zero" end)"'
    fi | awk '$3 == "data" { s = $1; e = $1 + $2
                             if (n && s == pe) { pe = e; next }
                             if (n) print ps, pe; ps = s; pe = e; n = 1 }
              END { if (n) print ps, pe }' >"$2"
}

# same_holes FLAT URI: the data extents vmfs reports equal the server's.
same_holes() {
    probe extents "$1" >"$WORK/ext.vmfs" || { cat "$WORK/ext.vmfs"; return 1; }
    nbd_data_map "$2" "$WORK/ext.nbd" || return 1
    diff -u "$WORK/ext.nbd" "$WORK/ext.vmfs"
}

# mount_uri URI MNT NAME: mount URI and wait until NAME shows.
mount_uri() {
    vmfs_mount "$1" "$2" || return 1
    local i
    for ((i = 0; i < 100; i++)); do
        [ -f "$2/$3" ] && return 0
        sleep 0.1
    done
    echo "$2/$3 did not appear; the mount holds:"
    ls -la "$2"
    return 1
}

# ---- qemu-nbd: a qcow2 image served decoded -----------------------------

qemu-img create -q -f qcow2 "$IMG/a.qcow2" 64M || hard_error "qemu-img create"
qemu-io -f qcow2 -c "write -P 0x41 1M 3M" -c "write -P 0x42 32M 64K" \
    -c "write -z 40M 1M" -c "write -P 0x43 63M 1M" "$IMG/a.qcow2" >/dev/null ||
    hard_error qemu-io
ref_raw "$IMG/a.qcow2" "$WORK/a.raw"
S1=$WORK/s1.sock
qnbd "$S1" "$WORK/s1.pid" -f qcow2 "$IMG/a.qcow2"
URI1="nbd+unix:///?socket=$S1"

# vmfs-info reads the export as a raw disk, where it takes URIs.
if info=$(t "$VMFS_INFO" --json "$URI1" 2>&1); then
    echo "$info" >"$WORK/info1.json"
    check "vmfs-info: the export is a raw disk of 64 MiB" \
        jq_true "$WORK/info1.json" '.format == "raw" and .virtual_size == 67108864'
elif echo "$info" | grep -q "No such file"; then
    echo "note: vmfs-info does not take NBD URIs: $info"
else
    not_ok "vmfs-info $URI1: $info"
fi

M1=$WORK/m1
if mount_uri "$URI1" "$M1" nbd; then
    ok "an NBD URI mounts, the export shows as nbd"
    check "nbd.d/ is there" test -d "$M1/nbd.d"
    check "st_size is the export's size" size_is "$M1/nbd" 67108864
    check "bytes equal qemu-img convert -O raw" same_file "$M1/nbd" "$WORK/a.raw"
    check "holes (SEEK_DATA/SEEK_HOLE) equal the server's block status" \
        same_holes "$M1/nbd" "$URI1"
    qemu_map "$IMG/a.qcow2" "$WORK/a.map"
    check "holes agree with qemu-img map of the image" \
        probe holes "$M1/nbd" "$WORK/a.raw" "$WORK/a.map"
    check "st_blocks shows a sparse disk" probe sparse "$M1/nbd"
    t cat "$M1/nbd.d/info.json" >"$WORK/m1.json"
    check "info: format raw, status ok" \
        jq_true "$WORK/m1.json" '.format == "raw" and .status == "ok"'
    check "writes fail with EROFS" probe erofs "$M1/nbd" "$M1"

    # The server goes away: reads fail with EIO, the daemon stays.
    check "the server stops" kill_server "$WORK/s1.pid"
    got=$(uncached_read "$M1/nbd" 1048576 65536)
    check "a read while the server is away fails with EIO (got $got)" test "$got" = 5
    got=$(uncached_read "$M1/nbd" 33554432 4096)
    check "so does the next one (got $got)" test "$got" = 5
    check "the daemon stays up" daemon_alive
    check "info still answers" t grep -q "format: raw" "$M1/nbd.d/info"
    # The server is back on the same socket: reads work again.
    qnbd "$S1" "$WORK/s1.pid" -f qcow2 "$IMG/a.qcow2"
    sleep 1.2
    got=$(uncached_read "$M1/nbd" 1048576 65536)
    check "reads work again once it is back (got $got)" test "$got" = ok
    drop_cache "$M1/nbd"
    check "bytes equal the reference again, no remount" same_file "$M1/nbd" "$WORK/a.raw"
    check "one log line for the outage, one for the recovery" \
        test "$(grep -c 'NBD server unreachable' "$VMFS_LOG")" -eq 1 -a \
        "$(grep -c 'NBD server is back' "$VMFS_LOG")" -eq 1
    check "vmfs at $M1 unmounts and exits cleanly" vmfs_umount "$M1"
else
    not_ok "vmfs mounts $URI1"
fi

# An export name names the disk.
S2=$WORK/s2.sock
qnbd "$S2" "$WORK/s2.pid" -f qcow2 -x disk0 "$IMG/a.qcow2"
M2=$WORK/m2
if mount_uri "nbd+unix:///disk0?socket=$S2" "$M2" disk0; then
    ok "export disk0 shows as disk0"
    check "disk0: bytes equal the reference" same_file "$M2/disk0" "$WORK/a.raw"
    check "vmfs at $M2 unmounts and exits cleanly" vmfs_umount "$M2"
else
    not_ok "vmfs mounts export disk0"
fi
kill_server "$WORK/s2.pid"

# ---- nbdkit ----------------------------------------------------------------

if command -v nbdkit >/dev/null 2>&1; then
    # nkit SOCK PIDFILE PLUGIN ARG...: nbdkit read-only on SOCK.
    nkit() {
        local sock=$1 pidf=$2
        shift 2
        rm -f "$sock"
        nbdkit -r -U "$sock" -P "$pidf" "$@" || hard_error "nbdkit $*"
        SERVERS+=("$pidf")
        local i
        for ((i = 0; i < 100; i++)); do
            [ -S "$sock" ] && return 0
            sleep 0.1
        done
        hard_error "nbdkit $* did not start"
    }

    # memory: all holes
    S3=$WORK/s3.sock
    nkit "$S3" "$WORK/s3.pid" memory 64M
    M3=$WORK/m3
    if mount_uri "nbd+unix:///?socket=$S3" "$M3" nbd; then
        check "nbdkit memory: 64 MiB" size_is "$M3/nbd" 67108864
        check "nbdkit memory: no data extents" \
            test -z "$(probe extents "$M3/nbd")"
        check "nbdkit memory: reads zeros" \
            t cmp -n 1048576 "$M3/nbd" /dev/zero
        check "vmfs at $M3 unmounts and exits cleanly" vmfs_umount "$M3"
    else
        not_ok "vmfs mounts nbdkit memory"
    fi
    kill_server "$WORK/s3.pid"

    # file: a sparse raw file
    probe mkraw "$IMG/sparse.raw" 32M 0:4K:text 1M:1M:rand 20M:64K:0x55 0x1fff000:4K:0x66 ||
        hard_error mkraw
    S4=$WORK/s4.sock
    nkit "$S4" "$WORK/s4.pid" file "$IMG/sparse.raw"
    M4=$WORK/m4
    if mount_uri "nbd+unix:///?socket=$S4" "$M4" nbd; then
        check "nbdkit file: bytes equal the file" same_file "$M4/nbd" "$IMG/sparse.raw"
        check "nbdkit file: holes equal the server's block status" \
            same_holes "$M4/nbd" "nbd+unix:///?socket=$S4"
        check "vmfs at $M4 unmounts and exits cleanly" vmfs_umount "$M4"
    else
        not_ok "vmfs mounts nbdkit file"
    fi
    kill_server "$WORK/s4.pid"

    # file: a qcow2 image served as it is, decoded by vmfs
    S5=$WORK/s5.sock
    nkit "$S5" "$WORK/s5.pid" file "$IMG/a.qcow2"
    M5=$WORK/m5
    if mount_uri "nbd+unix:///?socket=$S5" "$M5" nbd; then
        t cat "$M5/nbd.d/info.json" >"$WORK/m5.json"
        check "qcow2 content over NBD is decoded as qcow2" \
            jq_true "$WORK/m5.json" '.format == "qcow2" and .virtual_size == 67108864'
        check "qcow2 over NBD: bytes equal qemu-img convert" same_file "$M5/nbd" "$WORK/a.raw"
        check "vmfs at $M5 unmounts and exits cleanly" vmfs_umount "$M5"
    else
        not_ok "vmfs mounts a qcow2 file served by nbdkit"
    fi
    kill_server "$WORK/s5.pid"
else
    echo "note: nbdkit not installed: its checks are left out"
fi

# A socket nobody serves: the disk shows with info saying why, no crash.
M6=$WORK/m6
if mount_uri "nbd+unix:///?socket=$WORK/nobody.sock" "$M6" nbd; then
    t cat "$M6/nbd.d/info.json" >"$WORK/m6.json"
    check "no server: info says the export cannot be opened" \
        problem_named "$WORK/m6.json" "cannot be opened"
    check "no server: the disk is empty" size_is "$M6/nbd" 0
    check "vmfs at $M6 unmounts and exits cleanly" vmfs_umount "$M6"
else
    echo "note: vmfs does not mount a URI nobody serves"
fi

stop_servers
finish
