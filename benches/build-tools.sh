# Sourced by the benchmark scripts: builds vscsid and the load generator once and copies
# both into a run's directory, so edits and rebuilds during a run change nothing.
# Usage: build_tools DIR SCRIPT (SCRIPT names the caller in error messages); leaves
# DIR/vscsid and DIR/loadgen.
build_tools() {
  local dir=$1 who=$2 lg
  cargo build --release --quiet
  cp target/release/vscsid "$dir/vscsid"
  lg=$(cargo bench --bench loadgen --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
  [[ -x $lg ]] || { echo "$who: could not build the load generator" >&2; exit 1; }
  cp "$lg" "$dir/loadgen"
}
