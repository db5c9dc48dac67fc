#!/usr/bin/env bash
# The GPU check (DESIGN.md section 5): what a lent GPU runs in ONE call of under 10 minutes.
#
#   bench/gpu_check.sh               build for this GPU, genfast info, the cuda-marked tests of
#                                    every op family, `genfast bench --gpu`
#   bench/gpu_check.sh --cpu-dry-run the same shell logic on a CPU box: no build (uses the
#                                    installed genfast), cuda tests collected and skipped,
#                                    `genfast bench --quick` on the CPU
#
# Everything lands in one folder: $OUT when set (the device tool brings back at most 8 files,
# at most 2 folders down: this writes 7), else bench/results/gpu-<gpu name>: gpu_check.log
# (every step's output), summary.md, tests.log, tests.xml (JUnit, per-test times) and
# bench/<run>.json, .md, .png. Each step runs under its own `timeout`, so a hang in one still
# leaves the others' results; the whole run ends by DEADLINE_S (default 520 s; give the device
# call its 600). The machine is offline: nothing is downloaded, pip is told so, and genfast
# builds against the machine's own torch (--no-build-isolation).
# Exit status: 0 when every step passed, 1 when any failed (tests included), 2 on bad usage.
#
# A new op family needs no edit here: its GPU tests are marked `cuda` and its benchmark module
# is listed in genfast.benchmarks.OPS. A new kind of check is one more `step` line below.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DRY=0
case "${1:-}" in
  --cpu-dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac

START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-520}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1
# Triton must compile for the GPU: tests/conftest.py defaults this to 1 (the interpreter).
export TRITON_INTERPRET=0

gpu_name() {
  { nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo unknown; } |
    head -n1 | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9.' '-' | sed 's/^-*//; s/-*$//'
}
if [[ -n "${OUT:-}" ]]; then
  RESULTS=$OUT
elif [[ $DRY == 1 ]]; then
  RESULTS=bench/results/gpu-dry-run
else
  RESULTS=bench/results/gpu-$(gpu_name)
fi
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
SUMMARY=$RESULTS/summary.md
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"

say() { echo "$*" | tee -a "$LOG"; }

# step NAME MAX_S RESERVE_S LOG COMMAND...: run COMMAND under timeout, its output into the
# main log and into LOG too (- for none). Its limit is MAX_S, cut so that RESERVE_S seconds
# stay for the steps after it.
NAMES=() STATUS=() SECONDS_TAKEN=()
FAILED=0
step() {
  local name=$1 max=$2 reserve=$3 steplog=$4; shift 4
  [[ $steplog == - ]] && steplog=/dev/null
  local left=$((START + DEADLINE_S - $(date +%s) - reserve))
  local limit=$((left < max ? left : max))
  ((limit < 10)) && limit=10
  say ""
  say "===== $name (limit ${limit} s) ====="
  local t0 rc
  t0=$(date +%s)
  # SIGINT first: genfast bench saves what it measured; KILL 10 s later if it is stuck.
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" "$steplog"
  rc=${PIPESTATUS[0]}
  local took=$(($(date +%s) - t0)) status=ok
  if ((rc == 124 || rc == 130 || rc == 137)); then
    status="timed out after ${took} s (rc $rc)"
  elif ((rc != 0)); then
    status="failed (rc $rc)"
  fi
  [[ $status != ok ]] && FAILED=1
  NAMES+=("$name") STATUS+=("$status") SECONDS_TAKEN+=("$took")
  say "----- $name: $status, ${took} s"
}

# The build, with fallbacks that keep the rest of the check worth running: without the
# CUDA extension the Triton backend is still tested; without any build, the pure-Python
# package is staged on PYTHONPATH (reference and Triton backends).
# shellcheck disable=SC2329  # invoked as `bash -c build`, under timeout
build() {
  local arch
  arch=$("$PY" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())' \
    2>/dev/null || echo 90)
  if ! command -v nvcc >/dev/null 2>&1; then
    for d in "${CUDA_HOME:-}" /usr/local/cuda /opt/cuda; do
      [[ -n $d && -x $d/bin/nvcc ]] && export PATH=$d/bin:$PATH && break
    done
  fi
  local cuda=0
  if command -v nvcc >/dev/null 2>&1; then cuda=1; nvcc --version | tail -n2; fi
  echo "building for sm_$arch, GENFAST_CUDA=$cuda, MAX_JOBS=$(nproc)"
  local pip=("$PY" -m pip install --no-build-isolation --no-deps --no-index -e .)
  if ((cuda)) && GENFAST_CUDA=1 GENFAST_CUDA_ARCHS=$arch MAX_JOBS=$(nproc) "${pip[@]}"; then
    return 0
  fi
  echo "!! build with the CUDA extension failed or no nvcc: trying the CPU extension only"
  if GENFAST_CUDA=0 MAX_JOBS=$(nproc) "${pip[@]}"; then
    return 1  # the check goes on; the cuda backend's tests skip and say why
  fi
  echo "!! pip install failed: staging the pure-Python package on PYTHONPATH"
  mkdir -p "$WORK/stage" && cp -r genfast "$WORK/stage/" && cp -r kernels "$WORK/stage/genfast/"
  echo "export PYTHONPATH=$WORK/stage\${PYTHONPATH:+:\$PYTHONPATH}" >"$WORK/env.sh"
  return 1
}
export -f build
export PY WORK

# shellcheck disable=SC2329
info() {
  nvidia-smi 2>&1 | head -n 15
  "$PY" -c 'import sys, torch; print(sys.executable, sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
  "$PY" -m genfast.cli info
}
export -f info

TEST_ARGS=(-q -m cuda tests/
  --ignore-glob='*_triton.py'  # interpreter tests: they set TRITON_INTERPRET=1 at import
  -o addopts= -rfEs -p no:cacheprovider --durations=0 --durations-min=0.05
  --junitxml="$RESULTS/tests.xml")
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then TEST_ARGS+=(--timeout=150); fi

if [[ $DRY == 1 ]]; then
  say "cpu dry run: no build; cuda tests are collected and skipped; a quick CPU benchmark"
  BENCH=(-m genfast.cli bench --quick --no-progress --out "$RESULTS/bench")
else
  step build 240 330 - bash -c build
  # shellcheck disable=SC1091
  [[ -f $WORK/env.sh ]] && . "$WORK/env.sh"
  BENCH=(-m genfast.cli bench --gpu --no-progress --out "$RESULTS/bench")
fi
step info 60 320 - bash -c info
step tests 240 190 "$RESULTS/tests.log" "$PY" -m pytest "${TEST_ARGS[@]}"
step bench 330 5 - "$PY" "${BENCH[@]}"

# summary.md: the steps, the test tally, and the benchmark's own summary table.
{
  echo "# genfast GPU check: $(gpu_name), $(date -u +%FT%TZ)"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  for i in "${!NAMES[@]}"; do echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECONDS_TAKEN[$i]} |"; done
  echo
  "$PY" - "$RESULTS/tests.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as e:
    print(f"tests: no JUnit report ({e})")
    raise SystemExit
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
secs = sum(float(s.get("time", 0)) for s in suites)
print(f"tests: {n['tests']} run, {n['failures']} failed, {n['errors']} errors, "
      f"{n['skipped']} skipped, {secs:.0f} s")
bad = [c for c in root.iter("testcase") if c.find("failure") is not None
       or c.find("error") is not None]
for c in bad[:40]:
    msg = (c.find("failure") if c.find("failure") is not None else c.find("error")).get("message", "")
    print(f"- FAILED {c.get('classname')}::{c.get('name')}: {msg.splitlines()[0][:200] if msg else ''}")
EOF
  echo
  md=$(find "$RESULTS/bench" -name '*.md' 2>/dev/null | head -n1)  # one run, one file
  if [[ -n $md ]]; then sed -n '/^### summary/,$p' "$md"; else echo "bench: no results"; fi
} >"$SUMMARY" 2>&1
say ""
say "===== summary ($(($(date +%s) - START)) s in all; files in $RESULTS) ====="
tee -a "$LOG" <"$SUMMARY"
exit "$FAILED"
