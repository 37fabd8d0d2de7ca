#!/usr/bin/env bash
# Builds the small test guest: Debian's kernel (linux-image-amd64) and a busybox initramfs
# holding the modules for virtio-scsi disks and ext4, the storage tools the checks use
# (fio, sg3-utils, e2fsprogs, blkdiscard) with their libraries, and tests/qemu/guest-init.sh
# as /init. Usage: build-guest.sh <outdir> [passthrough]  ->  <outdir>/vmlinuz, <outdir>/initrd.gz
# The passthrough variant adds vscsid itself, its in-guest probe (examples/passthrough_check.rs)
# and scsi_debug with its dependencies under /lib/modules/extra (loaded by the test, not at
# boot), for tests/qemu/run-passthrough-e2e.sh. The result is reused while its inputs
# (kernel, tools, init script) are unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build-guest.sh <outdir> [passthrough]}
variant=${2:-}
mkdir -p "$out"

kver=$(ls -1 /lib/modules | sort -V | tail -n 1)
kernel=/boot/vmlinuz-$kver
[[ -r $kernel ]] || { echo "build-guest: no kernel at $kernel (install linux-image-amd64)" >&2; exit 1; }
[[ -x /bin/busybox ]] || { echo "build-guest: /bin/busybox missing (install busybox-static)" >&2; exit 1; }

MODULES=(virtio_pci virtio_scsi virtio_blk sd_mod sg ext4 crc32c_generic)
TOOLS=(fio sg_inq sg_vpd sg_modes sg_readcap sg_opcodes sg_raw sg_persist mke2fs e2fsck resize2fs blkdiscard)

tool_paths=()
for t in "${TOOLS[@]}"; do
  p=$(command -v "$t") || { echo "build-guest: $t missing (install fio, sg3-utils, e2fsprogs, util-linux)" >&2; exit 1; }
  tool_paths+=("$p")
done
# The project's own guest-side probe (examples/guest_dma_hold.rs, for the migration test).
(cd "$here" && cargo build --release --quiet --example guest_dma_hold)
dma_hold=$here/target/release/examples/guest_dma_hold
tool_paths+=("$dma_hold")
EXTRA_MODULES=()
if [[ $variant == passthrough ]]; then
  EXTRA_MODULES=(scsi_debug)
  (cd "$here" && cargo build --release --quiet --bin vscsid --example passthrough_check)
  tool_paths+=("$here/target/release/vscsid" "$here/target/release/examples/passthrough_check")
fi

key=$( {
  echo "$kver $variant"; sha256sum "$kernel" "$here/tests/qemu/guest-init.sh" "$0" /bin/busybox "${tool_paths[@]}"
} | sha256sum | cut -d' ' -f1)
if [[ -f $out/stamp && $(cat "$out/stamp") == "$key" && -f $out/initrd.gz && -f $out/vmlinuz ]]; then
  echo "build-guest: up to date ($out)"
  exit 0
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,root,lib/modules,usr/bin,usr/sbin}
cp /bin/busybox "$stage/bin/busybox"

# Kernel modules in load order (dependencies first), flattened into /lib/modules.
: > "$stage/etc/modules.order"
for m in "${MODULES[@]}"; do
  modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
  name=$(basename "$ko")
  case $ko in
    *.xz) xz -dc "$ko" > "$stage/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.zst) zstd -qdc "$ko" > "$stage/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$ko" "$stage/lib/modules/$name" ;;
  esac
  echo "$name" >> "$stage/etc/modules.order"
done

# Modules the test loads itself, with their dependencies, in load order.
mkdir -p "$stage/lib/modules/extra"
: > "$stage/etc/extra-modules.order"
for m in "${EXTRA_MODULES[@]}"; do
  modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
  name=$(basename "$ko")
  case $ko in
    *.xz) xz -dc "$ko" > "$stage/lib/modules/extra/${name%.xz}"; name=${name%.xz} ;;
    *.zst) zstd -qdc "$ko" > "$stage/lib/modules/extra/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$ko" "$stage/lib/modules/extra/$name" ;;
  esac
  echo "$name" >> "$stage/etc/extra-modules.order"
done

# Tools and every shared library they load, at their host paths (the probe in /usr/bin).
for p in "${tool_paths[@]}"; do
  dest=$p
  [[ $p == "$dma_hold" ]] && dest=/usr/bin/guest_dma_hold
  [[ $p == */target/release/vscsid ]] && dest=/usr/bin/vscsid
  [[ $p == */examples/passthrough_check ]] && dest=/usr/bin/passthrough_check
  mkdir -p "$stage$(dirname "$dest")"
  cp -L "$p" "$stage$dest"
  ldd "$p" 2>/dev/null | grep -oE '/[^ )]+' | while read -r lib; do
    mkdir -p "$stage$(dirname "$lib")"
    cp -Ln "$lib" "$stage$lib" 2>/dev/null || true
  done
done
ln -sf mke2fs "$stage/usr/sbin/mkfs.ext4" 2>/dev/null || ln -sf /usr/sbin/mke2fs "$stage/sbin/mkfs.ext4"
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$stage/etc/"

install -m 0755 "$here/tests/qemu/guest-init.sh" "$stage/init"
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$out/initrd.gz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
cp "$kernel" "$out/vmlinuz"
echo "$key" > "$out/stamp"
echo "build-guest: built $out (kernel $kver, $(du -h "$out/initrd.gz" | cut -f1) initramfs)"
