#!/usr/bin/env bash
# A QEMU command line attaching a guest's virtio-scsi controller to vscsid.
#
# vhost-user needs guest RAM the daemon can map: a memfd (or hugetlbfs/shm file) backend
# with share=on, made the guest's memory through a NUMA node. The device's num_queues must
# not exceed vscsid's --num-queues (QEMU defaults it to the number of vCPUs).
#
#   vscsid --socket /run/vscsid/vm1.sock --config /etc/vscsid/vm1.toml
#   QEMU=qemu-system-x86_64 SOCK=/run/vscsid/vm1.sock qemu-vhost-user-scsi.sh [QEMU args...]
#
# The chardev depends on the QEMU version (taken from `$QEMU --version`):
#
#   QEMU up to 8.1 (Debian 12's 7.2):   -chardev socket,id=vscsi0,path=$SOCK
#       No reconnection. vscsid must be listening when QEMU starts, and a backend that goes
#       away stays away for this QEMU's life. Do NOT add reconnect= here: with it the
#       chardev connects in the background, the device finds no backend at start-up and
#       QEMU exits ("vhost_backend_init failed").
#
#   QEMU 8.2 to 9.x:                     -chardev socket,id=vscsi0,path=$SOCK,reconnect=1
#   QEMU 10.0 and later:                 -chardev socket,id=vscsi0,path=$SOCK,reconnect-ms=1000
#       vhost-user-scsi reconnects: when vscsid restarts (crash, upgrade, systemd's
#       Restart=), QEMU connects again (reconnect= in seconds; 10.0 takes reconnect-ms=, in
#       milliseconds) and restarts the device; the guest sees a stall, not a removal.
#
# Debian 12 can run QEMU 10.0 beside its 7.2: scripts/install-qemu10.sh unpacks it into
# target/qemu10; run it with QEMU=<path it prints> (this script adds the -L and module
# directory such a private prefix needs).
set -euo pipefail
QEMU=${QEMU:-qemu-system-x86_64}
SOCK=${SOCK:-/run/vscsid/vm1.sock}
MEM=${MEM:-4G}
CPUS=${CPUS:-4}
ACCEL=${ACCEL:-kvm}            # tcg where there is no KVM

version=$("$QEMU" --version | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
read -r major minor <<< "$version"
[[ -n ${major:-} ]] || { echo "cannot tell the version of $QEMU" >&2; exit 1; }

chardev="socket,id=vscsi0,path=$SOCK"
if ((major >= 10)); then
  chardev+=",reconnect-ms=1000"        # QEMU 10.0+
elif ((major > 8 || (major == 8 && minor >= 2))); then
  chardev+=",reconnect=1"              # QEMU 8.2 to 9.x: seconds
fi                                     # QEMU 8.1 and older: no reconnection

# A QEMU unpacked into a private prefix (<prefix>/usr/bin/qemu-system-x86_64): its own
# data files first, and only its own modules (the system's belong to another build).
extra=()
qemu_path=$(command -v "$QEMU")
prefix=$(cd "$(dirname "$qemu_path")/../.." && pwd)
if [[ $prefix != / && -d $prefix/usr/share/qemu ]]; then
  extra=(-L "$prefix/usr/share/qemu")
  export QEMU_MODULE_DIR=$prefix/usr/lib/x86_64-linux-gnu/qemu
fi

cpu=max
[[ $ACCEL == kvm ]] && cpu=host

exec "$QEMU" "${extra[@]}" \
  -machine q35,accel="$ACCEL" -cpu "$cpu" -smp "$CPUS" -m "$MEM" \
  -object memory-backend-memfd,id=mem,size="$MEM",share=on \
  -numa node,memdev=mem \
  -chardev "$chardev" \
  -device vhost-user-scsi-pci,id=scsi0,chardev=vscsi0,num_queues="$CPUS",virtqueue_size=256 \
  -nographic "$@"
