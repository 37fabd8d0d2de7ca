#!/usr/bin/env bash
# Runs every test of the project, in order of cost: formatting and lints, unit and
# integration tests (including the in-process vhost-user frontend tests), a short run of
# every fuzz target, then the QEMU guest end-to-end tests, the lifecycle ones (QEMU killed,
# vscsid restarted), vscsid under a real systemd in a Debian 12 guest (its root
# filesystem built once from Debian's packages, cached in target/sysguest), and last
# persistent reservations on a two-path iSCSI LUN across a path failover. Installs the
# Debian packages it needs first, and QEMU 10 into target/qemu10. Fails loudly on the
# first failing stage; a missing peer (QEMU, kernel, fio, mmdebstrap, the nightly toolchain
# for the fuzz targets ...) is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n=== %s ===\n' "$*"; }

stage "dependencies"
scripts/install-deps.sh
scripts/install-qemu10.sh

stage "cargo fmt --check"
cargo fmt --check

stage "no import cycles between source files"
python3 scripts/import-cycles.py

stage "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

stage "cargo test (unit and integration)"
cargo test --all-targets

stage "fuzz targets, 30 s each from the committed corpora (nightly, cargo-fuzz)"
scripts/fuzz-smoke.sh

stage "QEMU guest end-to-end (emulated LUNs)"
tests/qemu/run-e2e.sh

stage "QEMU guest end-to-end (iSCSI passthrough LUN on tgtd)"
tests/qemu/run-iscsi-e2e.sh

stage "QEMU guest end-to-end (LUNs hot-added, grown and removed through vscsid ctl under fio)"
tests/qemu/run-hotplug-e2e.sh

stage "QEMU guest end-to-end (iSCSI multipath: paths cut in network namespaces under fio)"
tests/qemu/run-multipath-e2e.sh

stage "QEMU guest end-to-end (two guests share a disk through two vscsids and fence each other with persistent reservations)"
tests/qemu/run-reservations-e2e.sh

stage "QEMU guest end-to-end (local SCSI passthrough: vscsid in the guest on scsi_debug disk and tape, --sg and --disk ...,passthrough)"
tests/qemu/run-passthrough-e2e.sh

stage "QEMU guest end-to-end (live migration: QEMU 7.2 to QEMU 7.2, each with its own vscsid)"
tests/qemu/run-migration-e2e.sh

stage "QEMU guest end-to-end (live migration of an iSCSI LUN: both vscsids logged in to tgtd)"
tests/qemu/run-migration-e2e.sh --iscsi

stage "QEMU 10 guest end-to-end (live migration: QEMU 10 to QEMU 10)"
tests/qemu/run-migration-e2e.sh target/qemu10/usr/bin/qemu-system-x86_64 target/qemu10/usr/share/qemu

stage "QEMU guest lifecycle (QEMU SIGKILLed mid-I/O 20 times under one vscsid --reconnect)"
tests/qemu/run-qemu-kill-e2e.sh

stage "QEMU 10 guest lifecycle (vscsid SIGKILLed and SIGTERMed under fio, QEMU reconnects)"
tests/qemu/run-restart-e2e.sh

stage "Debian 12 guest with systemd as init (vscsid through its units: READY, socket, reload, restarts, watchdog, stop)"
tests/qemu/run-systemd-e2e.sh

stage "QEMU guest end-to-end (persistent reservations on an iSCSI LUN with two paths: sg_persist across a path failover)"
tests/qemu/run-iscsi-reservations-e2e.sh
