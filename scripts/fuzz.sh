#!/usr/bin/env bash
# `make fuzz`: runs each fuzz target for SECONDS (default 600) with cargo-fuzz on the nightly
# toolchain, then minimises its corpus. New corpus entries land in fuzz/corpus/<target>/ and
# crashes in fuzz/artifacts/<target>/: commit both, `make test` replays every one on stable.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET ...]      (default: every target in fuzz/fuzz_targets)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cargo +nightly fuzz build -O
status=0
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    mkdir -p "fuzz/corpus/$target"
    # -rss_limit_mb: a parser that balloons on some input is a finding too.
    log=$(mktemp)
    if ! cargo +nightly fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=1
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20
    fi
    grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
    rm -f "$log"
    cargo +nightly fuzz cmin -O "$target" >/dev/null 2>&1 || true
    echo "   corpus: $(ls "fuzz/corpus/$target" | wc -l) inputs; crashes: $(ls "fuzz/artifacts/$target" 2>/dev/null | wc -l)"
done
exit "$status"
