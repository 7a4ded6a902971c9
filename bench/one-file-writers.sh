#!/bin/bash
# Do parallel buffered writers into ONE file scale on this machine's filesystem?
# Writes 2 GiB of zeros (page cache only, no fsync) three ways, in alternating rounds:
#   one   one dd, the whole file
#   same  two dd at once, one half of the same (pre-sized) file each
#   two   two dd at once, one file each
# and prints each way's seconds (sorted) and its fastest. On ext4, buffered writes
# to one file hold its inode lock, so "same" takes as long as "one"; "two" shows
# what two writers could do. See bench/README.md, "Where the CPU goes".
# Usage: bench/one-file-writers.sh [DIR] [ROUNDS]   (DIR default: $TMPDIR or /tmp)
set -euo pipefail
dir=$(mktemp -d "${1:-${TMPDIR:-/tmp}}/ferry-writers.XXXXXX")
rounds=${2:-6}
trap 'rm -rf "$dir"' EXIT
run() {
  local start end
  rm -f "$dir"/f*
  start=$(date +%s%N)
  case $1 in
    one) dd if=/dev/zero of="$dir/f" bs=1M count=2048 status=none ;;
    same)
      truncate -s 2G "$dir/f"
      dd if=/dev/zero of="$dir/f" bs=1M count=1024 conv=notrunc status=none &
      dd if=/dev/zero of="$dir/f" bs=1M count=1024 seek=1024 conv=notrunc status=none &
      wait ;;
    two)
      dd if=/dev/zero of="$dir/f1" bs=1M count=1024 status=none &
      dd if=/dev/zero of="$dir/f2" bs=1M count=1024 status=none &
      wait ;;
  esac
  end=$(date +%s%N)
  rm -f "$dir"/f*
  echo $(( (end - start) / 1000000 ))
}
declare -A times
for ((r = 0; r < rounds; r++)); do
  for way in one same two; do times[$way]+="$(run $way) "; done
done
for way in one same two; do
  sorted=$(tr ' ' '\n' <<<"${times[$way]}" | grep . | sort -n | tr '\n' ' ')
  echo "$way: fastest $(cut -d' ' -f1 <<<"$sorted") ms of $rounds (all, ms: $sorted)"
done
