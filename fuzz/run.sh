#!/usr/bin/env bash
# A bounded fuzz of every target: `fuzz/run.sh [SECONDS]` (default 20 per target).
# cargo-fuzz comes from tools/ (a prebuilt binary from PyPI). libFuzzer needs nightly
# flags; RUSTC_BOOTSTRAP=1 lets the machine's stable toolchain accept them.
# The corpus grows in fuzz/corpus/<target> (not committed); it starts from fuzz/seeds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:-20}"
bin="$(../tools/install.sh)"
export PATH="$bin:$PATH" RUSTC_BOOTSTRAP=1
# Built once, then run as many at a time as there are cores (each target still has a
# core for its whole time).
cargo fuzz build -O
fuzz_one() {
  local target="$1" log seeds
  mkdir -p "corpus/$target"
  log="$(mktemp)"
  seeds="seeds/$target"
  [ -d "$seeds" ] || seeds="seeds/decode"
  if ! cargo fuzz run -O "$target" "corpus/$target" "$seeds" -- \
      -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 >"$log" 2>&1; then
    # A crash leaves its input in fuzz/artifacts/<target>/.
    grep -vE "^#[0-9]+" "$log" | tail -40 >&2
    echo "fuzz $target: FAILED (inputs, if any, in fuzz/artifacts/$target/)" >&2
    return 1
  fi
  echo "fuzz $target: ${seconds}s"
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|DONE" "$log"
}
cores="$(nproc)"
pids=()
failed=0
for target in decode encode_tag_ids differential splice; do
  fuzz_one "$target" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$cores" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
exit "$failed"
