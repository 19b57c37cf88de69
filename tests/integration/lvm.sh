#!/bin/bash
# vmfs: LVM2 logical volumes as NAME.d/lvm/VG/LV, made by the real LVM
# tools inside a libguestfs appliance (Debian's lvm2 cannot activate
# anything here: no device-mapper), and compared byte for byte with what
# the appliance reads from /dev/VG/LV.  A VG over two partitions with a
# linear LV in two segments, a striped LV over both PVs, a raid1 LV, a thin
# pool and a thin LV (not shown, listed with a reason); a PV on a whole
# disk.  The facts are checked against `lvm pvs/vgs/lvs --segments`.
# shellcheck source=tests/integration/lib.sh disable=SC1091
. "${top_srcdir:-$(dirname "$0")/../..}/tests/integration/lib.sh"

need guestfish qemu-img jq python3 sfdisk e2fsck blkid debugfs cmp
need_fuse
need_vmfs_info

SRC=$WORK/src
MNT=$WORK/mnt
REF=$WORK/ref
mkdir -p "$SRC" "$REF"

# Software emulation always: /dev/kvm may exist and still abort qemu (no
# nested virtualisation).  The session below takes 1-2 minutes.
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg

# Non-zero, offset-seeded bytes everywhere: an LV read from a wrong offset
# cannot match by accident, even in areas no file system touched.
probe mkraw "$REF/lvm.img" 256M 0:256M:rand || hard_error "mkraw"
probe mkraw "$REF/whole.img" 32M 0:32M:rand || hard_error "mkraw"

# One appliance session for everything ('-' lets an optional step fail:
# raid1 needs dm-raid, thin pools dm-thin-pool in the appliance kernel).
lvmjson() { echo "debug sh \"lvm $1 --reportformat json --units b --nosuffix $2\" | cat > $REF/$3"; }
cat >"$WORK/session.gf" <<EOF
add $REF/lvm.img format:raw
add $REF/whole.img format:raw
run
part-init /dev/sda mbr
part-add /dev/sda p 2048 34815
part-add /dev/sda p 34816 239615
part-add /dev/sda p 239616 444415
part-set-mbr-id /dev/sda 2 0x8e
part-set-mbr-id /dev/sda 3 0x8e
mkfs ext4 /dev/sda1 label:bootfs
pvcreate /dev/sda2
pvcreate /dev/sda3
vgcreate vg "/dev/sda2 /dev/sda3"
lvcreate lin vg 8
lvcreate gap vg 4
lvresize /dev/vg/lin 16
debug sh "lvm lvcreate -y -i2 -I64 -L 16M -n striped vg"
-debug sh "lvm lvcreate -y --type raid1 -m1 -L 8M -n mirror vg"
-debug sh "lvm lvcreate -y -L 8M -T vg/pool"
-debug sh "lvm lvcreate -y -V 16M -T vg/pool -n thin"
mkfs ext4 /dev/vg/lin label:linfs
mount /dev/vg/lin /
write /hello.txt "hello from lin"
umount /
mkfs ext4 /dev/vg/striped label:stripefs
mount /dev/vg/striped /
write /striped.txt "hello from striped"
umount /
-mkfs ext4 /dev/vg/mirror label:mirrorfs
pvcreate /dev/sdb
vgcreate vg2 /dev/sdb
lvcreate data vg2 8
mkfs ext4 /dev/vg2/data label:datafs
download /dev/vg/lin $REF/lin.raw
download /dev/vg/gap $REF/gap.raw
download /dev/vg/striped $REF/striped.raw
-download /dev/vg/mirror $REF/mirror.raw
download /dev/vg2/data $REF/data.raw
$(lvmjson pvs "-o vg_name,pv_name,pv_uuid,pe_start" pvs.json)
$(lvmjson vgs "-o vg_name,vg_uuid,vg_extent_size,vg_seqno" vgs.json)
$(lvmjson lvs "-a --segments -o vg_name,lv_name,seg_start_pe,seg_size_pe,segtype,stripes,stripe_size,seg_pe_ranges" lvs.json)
EOF
if ! timeout -k 10 900 guestfish -f "$WORK/session.gf" >"$WORK/session.log" 2>&1; then
    if grep -qE "guestfs_launch failed|could not create appliance|supermin" "$WORK/session.log"; then
        sed 's/^/  | /' "$WORK/session.log" | tail -20
        skip "the libguestfs appliance does not start here"
    fi
    sed 's/^/  | /' "$WORK/session.log" | tail -40
    hard_error "the guestfish session failed"
fi
sfdisk -J "$REF/lvm.img" >"$REF/sfdisk.json" || hard_error "sfdisk -J"
qemu-img convert -f raw -O qcow2 "$REF/lvm.img" "$SRC/lvm.qcow2" || hard_error "convert"
cp "$REF/whole.img" "$SRC/whole.img"

vmfs_mount "$SRC" "$MNT" || hard_error "mount"
D=$MNT/lvm.qcow2.d
W=$MNT/whole.img.d

# ---- the LVs' bytes ------------------------------------------------------

shown=(lin gap striped data)
[ -f "$REF/mirror.raw" ] && shown+=(mirror)
for lv in "${shown[@]}"; do
    f=$D/lvm/vg/$lv
    [ "$lv" = data ] && f=$W/lvm/vg2/data
    check "$lv: size $(stat -c %s "$REF/$lv.raw")" size_is "$f" "$(stat -c %s "$REF/$lv.raw")"
    check "$lv: the bytes the appliance reads from the LV" same_file "$f" "$REF/$lv.raw"
done
# shellcheck disable=SC2317 # called through check
e2check() { t e2fsck -fn "$1" >/dev/null 2>&1 || { echo "e2fsck -fn $1 failed"; return 1; }; }
check "lin passes e2fsck -fn" e2check "$D/lvm/vg/lin"
check "striped passes e2fsck -fn" e2check "$D/lvm/vg/striped"
check "lin: hello.txt" test "$(t debugfs -R "cat /hello.txt" "$D/lvm/vg/lin" 2>/dev/null)" = "hello from lin"
check "striped: striped.txt" \
    test "$(t debugfs -R "cat /striped.txt" "$D/lvm/vg/striped" 2>/dev/null)" = "hello from striped"
check "blkid: striped is ext4 labelled stripefs" \
    test "$(t blkid -o value -s LABEL "$D/lvm/vg/striped")" = stripefs
check "whole disk: vg2/data passes e2fsck -fn" e2check "$W/lvm/vg2/data"

# ---- what is not shown ---------------------------------------------------

for lv in mirror_rimage_0 mirror_rmeta_0 mirror_rimage_1 lvol0_pmspare pool pool_tdata \
    pool_tmeta thin; do
    check "lvm/vg/$lv is not shown" check_absent "$D/lvm/vg/$lv"
done
if jq -e '.report[0].seg[] | select(.lv_name == "thin")' "$REF/lvs.json" >/dev/null; then
    check "thin: listed, not readable, with its reason" jq_true "$D/info.json" \
        '.lvm.volume_groups[0].lvs[] | select(.name == "thin") |
         .readable == false and (.reason | test("thin")) and .path == null'
fi

# ---- the facts against lvm's own reports -----------------------------------

check "info.json: partitions hold LVM2 PVs, p1 ext4" jq_true "$D/info.json" \
    '.partition_table == "mbr" and .partitions[0].content == "ext4" and
     .partitions[0].label == "bootfs" and .partitions[1].content == "LVM2 PV" and
     .partitions[2].content == "LVM2 PV"'
check "info.json: VG, PVs, LVs and segments agree with lvm pvs/vgs/lvs" \
    python3 - "$D/info.json" "$REF" <<'EOF'
import json, subprocess, sys
info = json.load(open(sys.argv[1]))
ref = sys.argv[2]
rep = lambda f, k: [r for r in json.load(open(f"{ref}/{f}"))["report"][0][k] if r["vg_name"] == "vg"]
pvs, vgs, segs = rep("pvs.json", "pv"), rep("vgs.json", "vg"), rep("lvs.json", "seg")
parts = {p["node"][-1]: p["start"] * 512 for p in json.load(open(f"{ref}/sfdisk.json"))["partitiontable"]["partitions"]}
bad = []
vg = info["lvm"]["volume_groups"][0]
ext = int(vgs[0]["vg_extent_size"])
if (vg["name"], vg["uuid"], vg["seqno"], vg["extent_size"]) != (
        "vg", vgs[0]["vg_uuid"], int(vgs[0]["vg_seqno"]), ext):
    bad.append(f"VG facts {vg['name']} {vg['uuid']} {vg['seqno']} {vg['extent_size']} vs {vgs[0]}")
pv_by_uuid = {p["uuid"]: p for p in vg["pvs"]}
dev_of = {}
for p in pvs:
    mine = pv_by_uuid.get(p["pv_uuid"])
    want = "p" + p["pv_name"][-1]
    if not mine or mine["device"] != want or mine["pe_start"] != int(p["pe_start"]) or mine["missing"]:
        bad.append(f"PV {p} vs {mine}")
    else:
        dev_of[p["pv_name"]] = (mine["name"], int(p["pe_start"]), parts[p["pv_name"][-1]])
lvs = {lv["name"]: lv for lv in vg["lvs"]}
for s in segs:
    name = s["lv_name"].strip("[]")
    lv = lvs.get(name)
    if lv is None:
        bad.append(f"LV {name} missing from the facts")
        continue
    if name.startswith(("lin", "gap", "striped")) and lv["path"] != f"lvm/vg/{name}":
        bad.append(f"{name}: path {lv['path']}")
    if s["segtype"] not in ("linear", "striped"):
        continue
    mine = [g for g in lv["segments"] if g["start_extent"] == int(s["seg_start_pe"])]
    if len(mine) != 1 or mine[0]["type"] != s["segtype"] or mine[0]["extent_count"] != int(s["seg_size_pe"]):
        bad.append(f"{name}: segment {s} vs {mine}")
        continue
    g = mine[0]
    if s["segtype"] == "striped" and g.get("stripe_size") != int(s["stripe_size"]):
        bad.append(f"{name}: stripe size {g.get('stripe_size')} vs {s['stripe_size']}")
    ranges = s["seg_pe_ranges"].split()
    if len(ranges) != len(g["stripes"]):
        bad.append(f"{name}: {len(g['stripes'])} stripes vs {ranges}")
        continue
    for r, st in zip(ranges, g["stripes"]):
        dev, pe = r.rsplit(":", 1)
        first = int(pe.split("-")[0])
        pvname, pe_start, part = dev_of[dev]
        pv_off = pe_start + first * ext
        if (st["pv"], st["start_pe"], st["pv_offset"], st["disk_offset"]) != (pvname, first, pv_off, part + pv_off):
            bad.append(f"{name}: stripe {st} vs {r} (pv_offset {pv_off}, disk_offset {part + pv_off})")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
EOF
check "vmfs-info --json: the same LVs shown" test \
    "$(t "$VMFS_INFO" --json "$SRC/lvm.qcow2" | jq -c '[.lvm.volume_groups[0].lvs[] | select(.path) | .name] | sort')" \
    = "$(printf '%s\n' "${shown[@]}" | grep -vx data | jq -Rsc 'split("\n") | map(select(. != "")) | sort')"
check "whole disk: no table, an LVM2 PV, vg2/data" jq_true "$W/info.json" \
    '.partition_table == "none" and .disk_content == "LVM2 PV" and
     .lvm.volume_groups[0].name == "vg2" and .lvm.volume_groups[0].pvs[0].device == "disk" and
     (.lvm.volume_groups[0].lvs[0] | .path == "lvm/vg2/data" and .content == "ext4" and .label == "datafs")'
check "info shows the volume groups" grep -q "volume groups:" "$D/info"

finish
