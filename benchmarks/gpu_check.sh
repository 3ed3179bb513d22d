#!/usr/bin/env bash
# mmfuse GPU check: one command on a one-GPU machine, under 8 minutes, nothing downloaded.
#
#   bash benchmarks/gpu_check.sh [--copy-to DIR]        # from anywhere; it works in the repository root
#   bash benchmarks/gpu_check.sh --dry-run              # no GPU needed: the install and the plumbing, with the
#                                                       # GPU steps printed instead of run (into .gpu-check/dry-run)
#
# Steps (each logged with its duration; a failed or timed-out step is recorded and the next one still runs):
#   1. CUDA must be available to PyTorch, else it stops here with exit status 2.
#   2. Python packages the machine lacks are installed offline from benchmarks/gpu-wheels/ into .gpu-check/site
#      (pip --no-index --no-deps --target), which goes on PYTHONPATH; mmfuse itself runs from the checkout.
#   3. tests/test_gpu.py -m "gpu or not slow": the `gpu`-marked CUDA tests and the quick CPU-side ones beside them.
#   4. The embedded demo dataset is generated (into .gpu-check/cache, a few seconds).
#   5. mmfuse bench --preset gpu --device cuda --precision bf16 --cases encode,train,embed: BERT-base-shaped text
#      and ViT-B/16 towers (random-init) and the demo model at GPU batch sizes, MFU against the same run's bf16
#      matmul peak (an 8192^2 matmul).
#   6. A short demo fine-tune on the GPU (mmfuse finetune --device cuda, 3 epochs).
# It writes benchmarks/results/<gpu-tag>/ (tag from the device name, e.g. nvidia-h200-16cpu-1gpu): gpu-check.md
# (the summary), report.json / report.md (the bench; plots when matplotlib is installed), gpu-tests.txt,
# bench.txt, finetune.txt, demo-finetune.json. --copy-to DIR also copies that folder into DIR after every step
# (a remote runner that only returns files from its output folder: --copy-to "$OUT").
# Budget: GPU_CHECK_BUDGET seconds in all (default 470); each step is cut at its share of what is left.
#
# Wheels to bring. The GPU machine has PyTorch (CUDA), timm, transformers, peft, onnxruntime, pandas and pyarrow but
# no webdataset, braceexpand, soundfile, open_clip_torch or pytest, and no network. On a machine with network, in
# the repository root:
#
#   bash benchmarks/gpu_check.sh --download-wheels
#
# which runs `pip download --no-deps --only-binary=:all: -d benchmarks/gpu-wheels` for
#   needed:   webdataset braceexpand soundfile cffi pycparser pytest pluggy iniconfig pygments packaging
#             (+ tomli exceptiongroup, which pytest needs on Python < 3.11)
#   optional: open_clip_torch ftfy wcwidth (open-clip encoders; this check does not build one)
# pinned to this environment's versions where it has them, pure-Python wheels plus cffi's binary wheels for
# CPython 3.10-3.14 on manylinux x86_64 (soundfile's manylinux wheel carries libsndfile). benchmarks/gpu-wheels/ is
# gitignored: copy it along with the checkout (a remote runner: carry it). Here the script then runs, for what is
# missing only:
#
#   python -m pip install --no-index --no-deps --find-links benchmarks/gpu-wheels --target .gpu-check/site <dists>
#
# Environment: PYTHON (default: python3 or python, whichever imports torch), GPU_CHECK_PRECISION (bf16),
# GPU_CHECK_BUDGET (470), GPU_CHECK_WHEELS (benchmarks/gpu-wheels), GPU_CHECK_WORK (.gpu-check: installed packages,
# demo data, runs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-}
if [[ -z $PY ]]; then  # the first of python3, python that has PyTorch
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
            PY=$candidate
            break
        fi
    done
    PY=${PY:-python3}
fi
WHEELS=${GPU_CHECK_WHEELS:-benchmarks/gpu-wheels}
WORK=${GPU_CHECK_WORK:-$ROOT/.gpu-check}
PRECISION=${GPU_CHECK_PRECISION:-bf16}
BUDGET=${GPU_CHECK_BUDGET:-470}
NEEDED=(webdataset:webdataset braceexpand:braceexpand soundfile:soundfile cffi:cffi pycparser:pycparser
        pytest:pytest pluggy:pluggy iniconfig:iniconfig pygments:pygments packaging:packaging
        tomli:tomli exceptiongroup:exceptiongroup)
OPTIONAL=(open_clip_torch:open_clip ftfy:ftfy wcwidth:wcwidth)
COPY_TO=""
MODE=check
DRY_RUN=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
say() { printf '\n== [%s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$SECONDS" "$*"; }
die() { printf 'gpu_check: %s\n' "$*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --copy-to) [[ $# -ge 2 ]] || die "--copy-to needs a directory"; COPY_TO=$2; shift 2 ;;
        --download-wheels) MODE=download; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

download_wheels() {
    say "downloading wheels into $WHEELS (pip download, this machine's network)"
    mkdir -p "$WHEELS"
    local names=() pair
    for pair in "${NEEDED[@]}" "${OPTIONAL[@]}"; do names+=("${pair%%:*}"); done
    # pin to this environment's versions where it has the package
    mapfile -t specs < <("$PY" - "${names[@]}" <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
EOF
)
    local universal=() cffi="" tomli=""
    for spec in "${specs[@]}"; do
        case $spec in
            cffi*) cffi=$spec ;;
            tomli*) tomli=$spec ;;  # pytest needs it on Python 3.10 only; it has compiled wheels per version
            *) universal+=("$spec") ;;
        esac
    done
    "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "${universal[@]}"
    local version
    for version in 3.10 3.11 3.12 3.13 3.14; do  # cffi is compiled per CPython version
        "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" --implementation cp \
            --python-version "$version" --abi "cp${version/./}" \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            "$cffi" $([[ $version == 3.10 ]] && echo "$tomli")
    done
    ls -l "$WHEELS"
    say "done: copy $WHEELS along with the checkout, then run bash benchmarks/gpu_check.sh on the GPU machine"
}

if [[ $MODE == download ]]; then
    download_wheels
    exit 0
fi

say "mmfuse GPU check in $ROOT (python: $(command -v "$PY" || echo "$PY not found"))"
command -v "$PY" >/dev/null || die "no '$PY' on PATH (set PYTHON=/path/to/python)"
NO_CUDA="CUDA is not available to PyTorch on this machine: this check needs a CUDA GPU"
"$PY" - <<'EOF' || ((DRY_RUN)) || die "$NO_CUDA"
import sys
try:
    import torch
except ImportError as err:
    sys.exit(f"gpu_check: PyTorch is not importable: {err}")
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available: {cuda}")
if cuda:
    print(f"device 0: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s), "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
sys.exit(0 if cuda else 1)
EOF

say "offline install of the missing Python packages from $WHEELS"
SITE=$WORK/site
rm -rf "$SITE"
mkdir -p "$SITE" "$WORK/cache"
missing() {  # dist names among "dist:module" pairs whose module is not importable
    "$PY" - "$@" <<'EOF'
import importlib.util
import sys
for pair in sys.argv[1:]:
    dist, module = pair.split(":")
    if module in ("tomli", "exceptiongroup") and sys.version_info >= (3, 11):
        continue  # pytest needs them on Python < 3.11 only
    if importlib.util.find_spec(module) is None:
        print(dist)
    elif module in ("pluggy", "iniconfig") and importlib.util.find_spec("pytest") is None:
        print(dist)  # the versions our pytest needs, whatever older ones the machine has
EOF
}
mapfile -t need < <(missing "${NEEDED[@]}")
mapfile -t want < <(missing "${OPTIONAL[@]}")
if [[ ${#need[@]} -gt 0 ]]; then
    echo "missing: ${need[*]}"
    [[ -d $WHEELS ]] || die "$WHEELS does not exist: bring the wheels (bash benchmarks/gpu_check.sh --download-wheels" \
        "on a machine with network, see the header)"
    "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" --target "$SITE" --quiet "${need[@]}" \
        || die "could not install ${need[*]} from $WHEELS (wrong Python version or platform? see the header)"
else
    echo "nothing needed is missing"
fi
if [[ ${#want[@]} -gt 0 && -d $WHEELS ]]; then
    "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" --target "$SITE" --quiet "${want[@]}" \
        || echo "optional packages not installed (${want[*]}): open-clip encoders are unavailable, the check needs none"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MMFUSE_CACHE=$WORK/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import webdataset, soundfile, pytest, mmfuse.finetune, mmfuse.bench" \
    || die "the installed packages do not import (see above)"

TAG=$("$PY" -c "from mmfuse.bench.env import capture_environment, environment_tag
print(environment_tag(capture_environment()))")
RESULTS=$ROOT/benchmarks/results/$TAG
((DRY_RUN)) && RESULTS=$WORK/dry-run/$TAG
mkdir -p "$RESULTS"
STATUS=$WORK/status.tsv
: >"$STATUS"
echo "results: $RESULTS"

sync_out() {
    if [[ -n $COPY_TO ]]; then
        mkdir -p "$COPY_TO"
        cp -r "$RESULTS" "$COPY_TO/"
    fi
}

step() {  # step NAME SHARE_SECONDS LOG -- command...: run with a timeout, record status and duration, continue
    local name=$1 share=$2 log=$3
    shift 4
    local left=$((BUDGET - SECONDS)) limit rc start=$SECONDS
    limit=$((share < left ? share : left))
    if ((limit < 10)); then
        say "$name: skipped, the ${BUDGET}s budget is spent"
        printf '%s\tskipped (budget)\t0\n' "$name" >>"$STATUS"
        return 0
    fi
    say "$name (at most ${limit}s): $*"
    if ((DRY_RUN)); then
        printf 'dry run: not run\n' | tee "$RESULTS/$log"
        printf '%s\tdry run\t0\n' "$name" >>"$STATUS"
        return 0
    fi
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$RESULTS/$log"
    rc=${PIPESTATUS[0]}
    set -e
    local result=ok
    if ((rc == 124 || rc == 137)); then
        result="timed out after ${limit}s"
    elif ((rc != 0)); then
        result="failed (exit $rc)"
    fi
    printf '%s\t%s\t%s\n' "$name" "$result" "$((SECONDS - start))" >>"$STATUS"
    say "$name: $result in $((SECONDS - start))s"
    sync_out
}

step "gpu tests" 200 gpu-tests.txt -- "$PY" -m pytest tests/test_gpu.py -m "gpu or not slow" -p no:cacheprovider -q -rs
step "demo data" 90 demo-data.txt -- "$PY" -c "from mmfuse.data.demo import demo_dataset; print(demo_dataset())"
step "bench" 240 bench.txt -- "$PY" -m mmfuse bench --preset gpu --device cuda --precision "$PRECISION" \
    --cases encode,train,embed --repeats 3 --warmup 1 --min-time 0.5 --workers 4 --out "$RESULTS"
rm -rf "$WORK/demo-run"
step "demo finetune" 120 finetune.txt -- "$PY" -m mmfuse finetune --device cuda --epochs 3 --workers 4 \
    --no-progress --out "$WORK/demo-run"
if [[ -f $WORK/demo-run/metrics.json ]]; then cp "$WORK/demo-run/metrics.json" "$RESULTS/demo-finetune.json"; fi

say "summary: $RESULTS/gpu-check.md"
"$PY" - "$RESULTS" "$STATUS" "$SECONDS" "$PRECISION" <<'EOF'
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

results, status, seconds, precision = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [line.split("\t") for line in status.read_text().splitlines() if line]
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA (dry run)"
lines = [f"# mmfuse GPU check: `{results.name}`", "",
         f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} · {device} · torch "
         f"{torch.__version__} (CUDA {torch.version.cuda}) · `bash benchmarks/gpu_check.sh` · {seconds} s", "",
         "| step | result | seconds | log |", "|---|---|---|---|"]
logs = {"gpu tests": "gpu-tests.txt", "demo data": "demo-data.txt", "bench": "bench.txt",
        "demo finetune": "finetune.txt"}
lines += [f"| {name} | {result} | {secs} | [{logs[name]}]({logs[name]}) |" for name, result, secs in rows]
tests = results / "gpu-tests.txt"
if tests.exists():
    summary = [ln for ln in tests.read_text().splitlines() if " in " in ln and ("passed" in ln or "failed" in ln)]
    lines += ["", f"GPU tests: `{summary[-1].strip('= ') if summary else 'no summary line'}`"]
bench = results / "report.json"
if bench.exists():
    report = json.loads(bench.read_text())
    cal = report["calibration"]
    lines += ["", f"## Bench ({report['settings']['precision']}; details in [report.md](report.md))", "",
              f"Calibration: {cal['dtype']} matmul {cal['size']}^2 at {cal['peak_flops'] / 1e12:.1f} TFLOP/s "
              f"(drift {cal['drift']:.1%}); MFU is against it.", "",
              "| case | batch | samples/s | ratio to baseline | TFLOP/s | MFU |", "|---|---|---|---|---|---|"]
    for case in report["cases"]:
        rate = case["series"]["mmfuse"]["median"]
        ratio = f"{case['ratio']['median']:.3f}" if case["ratio"] else ""
        flops = f"{case['flops_per_sample'] * rate / 1e12:.1f}" if case["flops_per_sample"] else ""
        mfu = f"{case['mfu']['mmfuse']:.1%}" if case["mfu"] else ""
        lines.append(f"| `{case['name']}` | {case['batch_size']} | {rate:.1f} | {ratio} | {flops} | {mfu} |")
    lines += [""] + [f"- flag: {flag}" for flag in report["flags"]]
run = results / "demo-finetune.json"
if run.exists():
    metrics = json.loads(run.read_text())
    lines += ["", "## Demo fine-tune", "",
              f"{metrics['device']} {metrics['precision']}, {metrics['steps']} steps in {metrics['train_time_s']} s: "
              f"test accuracy {metrics['test']['accuracy']:.4f} (best epoch {metrics['best_epoch']}); per epoch "
              + ", ".join(f"data {e['data_s']} s / compute {e['compute_s']} s" for e in metrics["epochs"])]
(results / "gpu-check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
sync_out

if grep -qvE $'\t(ok|dry run)\t' "$STATUS"; then
    say "GPU check finished with failures (see the table above)"
    exit 1
fi
say "GPU check $( ((DRY_RUN)) && echo "dry run " )passed in ${SECONDS}s"
