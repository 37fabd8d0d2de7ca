#!/usr/bin/env bash
# Installs the Debian packages vscsid's scripts and tests need, when missing. Idempotent and
# quick when everything is there. Needs root (apt-get).
set -euo pipefail

PACKAGES=(
  qemu-system-x86 qemu-system-common qemu-block-extra qemu-utils
  linux-image-amd64 busybox-static fio sg3-utils e2fsprogs util-linux
  cpio gzip kmod tgt libiscsi-bin iproute2 iptables
  systemd libvirt-clients libxml2-utils mmdebstrap
  curl python3-prometheus-client
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all packages present"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages (${missing[*]}) and not root: cannot install" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another apt/dpkg may hold the lock: wait for it, bounded.
apt_opts=(-o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
apt-get -o DPkg::Lock::Timeout=600 -q update
apt-get "${apt_opts[@]}" install "${missing[@]}"

for p in "${missing[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    echo "install-deps: $p is still missing after installation" >&2
    exit 1
  fi
done
echo "install-deps: done"
