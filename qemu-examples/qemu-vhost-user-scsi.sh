#!/usr/bin/env bash
# A QEMU command line attaching a guest's virtio-scsi controller to vscsid.
#
# vhost-user needs guest RAM the daemon can map: a memfd (or hugetlbfs/shm file) backend
# with share=on, made the guest's memory through a NUMA node. The device's num_queues must
# not exceed vscsid's --num-queues (QEMU defaults it to the number of vCPUs).
#
#   vscsid --socket /run/vscsid/vm1.sock --config /etc/vscsid/vm1.toml
#
set -euo pipefail
SOCK=${SOCK:-/run/vscsid/vm1.sock}
MEM=${MEM:-4G}
CPUS=${CPUS:-4}

exec qemu-system-x86_64 \
  -machine q35,accel=kvm -cpu host -smp "$CPUS" -m "$MEM" \
  -object memory-backend-memfd,id=mem,size="$MEM",share=on \
  -numa node,memdev=mem \
  -chardev socket,id=vscsi0,path="$SOCK",reconnect=1 \
  -device vhost-user-scsi-pci,id=scsi0,chardev=vscsi0,num_queues="$CPUS",virtqueue_size=256 \
  -nographic "$@"
