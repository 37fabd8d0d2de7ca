#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ briefly (FUZZ_SECONDS each, default 30) from its committed
# corpus, so that a regression in a parser or in the request path shows up in CI. Builds
# all targets once (nightly toolchain, cargo-fuzz, AddressSanitizer), then runs them one
# after another. New inputs go to a scratch directory, never into the committed corpus.
# Fails loudly when nightly or cargo-fuzz cannot be had, and when a target crashes, panics,
# hangs (-timeout) or runs out of memory; the input is kept under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
targets=(cdb virtio_request control_queue iscsi_pdu iscsi_login iscsi_session config_toml lun_spec)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz-smoke: no nightly toolchain (rustup toolchain install nightly); cargo-fuzz needs it" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz missing; installing it from crates.io"
    if ! cargo install cargo-fuzz --locked; then
        echo "fuzz-smoke: cannot install cargo-fuzz" >&2
        exit 1
    fi
fi

(cd fuzz && cargo +nightly fuzz build -O)
bin=fuzz/target/x86_64-unknown-linux-gnu/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Targets whose daemon code leaves detached threads running between inputs and at exit
# (the task management ticker; the session's keepalive and re-login threads): LeakSanitizer
# reports what a thread still alive at its check holds, so leaks are not checked there.
leak_check() {
    case "$1" in
        control_queue | iscsi_session) echo 0 ;;
        *) echo 1 ;;
    esac
}

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "$scratch/artifacts/$t"
    printf 'fuzz-smoke: %-15s %ss ... ' "$t" "$seconds"
    leaks=$(leak_check "$t")
    if ASAN_OPTIONS="detect_odr_violation=0:detect_leaks=$leaks" "$bin/$t" "$scratch/$t" \
        "fuzz/corpus/$t" -max_total_time="$seconds" -timeout=10 -max_len=8192 \
        -detect_leaks="$leaks" -artifact_prefix="$scratch/artifacts/$t/" \
        >"$scratch/$t.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" | tail -1 || echo "ok"
    else
        echo "FAILED"
        tail -40 "$scratch/$t.log" >&2
        mkdir -p "fuzz/artifacts/$t"
        cp "$scratch/artifacts/$t/"* "fuzz/artifacts/$t/" 2>/dev/null || true
        echo "fuzz-smoke: $t failed; reproduce with: (cd fuzz && cargo +nightly fuzz run -O $t artifacts/$t/<file>)" >&2
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "fuzz-smoke: failing targets: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets ran ${seconds}s each without a finding"
