#!/usr/bin/env bash
# Runs the two commands of `make demo` into a temporary folder and counts the lines they
# print (stdout and stderr together, as a person sees them); fails when over the limit.
#   scripts/count_demo_lines.sh            # limit 60
#   LIMIT=40 PYTHON=.venv/bin/python scripts/count_demo_lines.sh
# Takes as long as the demo (minutes). The output is kept in $OUT_DIR/demo.log.
set -euo pipefail
LIMIT=${LIMIT:-60}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT_DIR=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/vaeood-demo.XXXXXX")}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/demo.log"
: > "$LOG"
started=$(date +%s)
"$PYTHON" -m vaeood.cli reproduce fig2a --preset quick --out "$OUT_DIR/fig2a" >> "$LOG" 2>&1
"$PYTHON" -m vaeood.cli reproduce ood-suite --preset demo --out "$OUT_DIR/detectors" >> "$LOG" 2>&1
lines=$(wc -l < "$LOG")
echo "make demo printed $lines lines (limit $LIMIT) in $(( $(date +%s) - started )) s; output: $LOG"
if (( lines > LIMIT )); then
  cat "$LOG"
  echo "too many lines: $lines > $LIMIT" >&2
  exit 1
fi
