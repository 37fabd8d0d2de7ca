#!/usr/bin/env bash
# Regenerates the fuzz targets' seed inputs from the tests and examples
# (fuzz/examples/write_seeds.rs) and merges them into the committed corpora under
# fuzz/corpus/<target>/, minimised with `cargo fuzz cmin` on edges alone (-use_counters=0):
# the fewest inputs that still reach every edge the corpus reached. Needs the nightly
# toolchain and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

targets=(cdb virtio_request control_queue iscsi_pdu iscsi_login iscsi_session config_toml lun_spec)
rm -rf seeds
cargo +nightly run --example write_seeds -- seeds
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp seeds/"$t"/* "corpus/$t/"
    cargo +nightly fuzz cmin -O "$t" "corpus/$t" -- -max_len=8192 -use_counters=0
done
du -sh corpus
