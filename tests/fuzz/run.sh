#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a while (default 60 s):
#   bash tests/fuzz/run.sh [seconds]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
seconds="${1:-60}"
out="$root/build/fuzz"
mkdir -p "$out/corpus"
clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I"$root/include" \
  "$root/tests/fuzz/fuzz_frontend.cpp" "$root"/src/protocol/*.cpp -lcrypto -o "$out/fuzz_frontend"
"$out/fuzz_frontend" -max_total_time="$seconds" -max_len=4096 "$out/corpus"
