#!/usr/bin/env bash
# Builds the systemd test guest of tests/qemu/run-systemd-e2e.sh: a small Debian 12 root
# filesystem from Debian's packages (mmdebstrap, minbase plus systemd as init) as a raw
# ext4 image, Debian's kernel (linux-image-amd64, the host's /boot) and a busybox initramfs
# that loads the virtio-blk and ext4 modules, mounts /dev/vda and hands over to systemd.
# The image holds no vscsid: at boot, vscsid-guest-test.service mounts the second disk
# (/dev/vdb, made per run by the test) and runs its run.sh, output on the serial console.
# Usage: build-systemd-guest.sh <outdir>  ->  <outdir>/{vmlinuz,initrd.gz,rootfs.img}
# The result is reused while its inputs (this script, so the package list, the kernel,
# busybox, the mirror) are unchanged: the first build downloads about 60 MB of packages and
# takes one to three minutes, later runs none.
set -euo pipefail
out=${1:?usage: build-systemd-guest.sh <outdir>}
mkdir -p "$out"

SUITE=bookworm
PACKAGES=(systemd systemd-sysv dbus util-linux passwd procps perl-base)
# The mirror this machine's apt uses for bookworm (deb.debian.org when none is found).
mirror=$( { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
  | awk '$1 == "URIs:" { print $2 } $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
  | grep -v -- '-security' | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

kver=$(ls -1 /lib/modules | sort -V | tail -n 1)
kernel=/boot/vmlinuz-$kver
[[ -r $kernel ]] || { echo "build-systemd-guest: no kernel at $kernel (install linux-image-amd64)" >&2; exit 1; }
[[ -x /bin/busybox ]] || { echo "build-systemd-guest: /bin/busybox missing (install busybox-static)" >&2; exit 1; }
for t in mmdebstrap mkfs.ext4 modprobe cpio gzip; do
  command -v "$t" >/dev/null || { echo "build-systemd-guest: $t missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

key=$( { echo "$kver $SUITE $mirror"; sha256sum "$0" "$kernel" /bin/busybox; } | sha256sum | cut -d' ' -f1)
if [[ -f $out/stamp && $(cat "$out/stamp") == "$key" && -f $out/rootfs.img && -f $out/initrd.gz && -f $out/vmlinuz ]]; then
  echo "build-systemd-guest: up to date ($out)"
  exit 0
fi
rm -f "$out/stamp"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# The initramfs: busybox, the modules for the root disk, and an /init that mounts it.
init=$stage/initramfs
mkdir -p "$init"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$init/bin/busybox"
for m in virtio_pci virtio_blk ext4 crc32c_generic; do
  modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
  name=$(basename "$ko")
  case $ko in
    *.xz) xz -dc "$ko" > "$init/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.zst) zstd -qdc "$ko" > "$init/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$ko" "$init/lib/modules/$name" ;;
  esac
  echo "$name" >> "$init/modules.order"
done
cat > "$init/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "initramfs: cannot mount /dev/vda"; poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
EOF
chmod 755 "$init/init"
(cd "$init" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$out/initrd.gz.tmp"

# The root filesystem. Boot time under TCG matters: no udev (the disks are mounted by
# name), no getty, nothing but systemd, journald, dbus and the test's unit.
root=$stage/root
mkdir -p "$root"
mmdebstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --customize-hook='echo sysguest > "$1/etc/hostname"' \
  --customize-hook=': > "$1/etc/fstab"' \
  --customize-hook='chroot "$1" passwd -d root' \
  --customize-hook='for u in getty@tty1.service serial-getty@ttyS0.service systemd-timesyncd.service proc-sys-fs-binfmt_misc.automount apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do ln -sf /dev/null "$1/etc/systemd/system/$u"; done' \
  --customize-hook='mkdir -p "$1/etc/systemd/system/multi-user.target.wants"' \
  --customize-hook='cat > "$1/etc/systemd/system/vscsid-guest-test.service" <<EOF
[Unit]
Description=vscsid guest test (run.sh of the second disk)
ConditionPathExists=/dev/vdb
[Service]
Type=simple
ExecStart=/bin/sh -c "mkdir -p /mnt/payload && mount -t ext4 /dev/vdb /mnt/payload && exec /bin/bash /mnt/payload/run.sh"
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
EOF' \
  --customize-hook='ln -sf ../vscsid-guest-test.service "$1/etc/systemd/system/multi-user.target.wants/vscsid-guest-test.service"' \
  --customize-hook='rm -rf "$1/var/cache/apt/archives"/*.deb "$1/var/lib/apt/lists"/*' \
  "$SUITE" "$root" "$mirror"
[[ -x $root/lib/systemd/systemd ]] || { echo "build-systemd-guest: no systemd in the root filesystem" >&2; exit 1; }

size_mb=$(( $(du -sm "$root" | cut -f1) + 512 ))
rm -f "$out/rootfs.img.tmp"
mkfs.ext4 -q -L sysguest -d "$root" "$out/rootfs.img.tmp" "${size_mb}M" > /dev/null
mv "$out/rootfs.img.tmp" "$out/rootfs.img"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
cp "$kernel" "$out/vmlinuz"
echo "$key" > "$out/stamp"
echo "build-systemd-guest: built $out (Debian $SUITE, kernel $kver, $(du -h --apparent-size "$out/rootfs.img" | cut -f1) root image)"
