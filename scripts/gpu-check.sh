#!/usr/bin/env bash
# The GPU check on a freshly lent GPU machine, set up from nothing but this repo, in one command:
#
#   scripts/gpu-check.sh [--out DIR] [--device cuda|cuda:N|cpu] [--quick]
#
# 1. finds a Python >= 3.11 whose torch sees a GPU (this repo's .venv, .venv-gpu, python3, ...);
#    only when there is none, makes .venv-gpu with torch from the package index (with
#    --device cpu, the small CPU run of the same code, any torch will do);
# 2. installs what the check imports and that Python lacks (scripts/gpu-check-requirements.txt)
#    into .gpu-check/, from .whl/ when it is there (a machine that cannot reach the index),
#    else from the index;
# 3. runs `python -m harness bench --only gpu`, which prints its progress and the table and
#    writes DIR/gpu-check.json and DIR/gpu-check.txt (default DIR: runs/gpu-check).
#
# Where pip works, `scripts/gpu-check.sh --fetch-wheels` downloads those packages' wheels into
# .whl/ for a machine without the index (Python 3.12, the lent H200s'; GPU_CHECK_PYTHON=3.11
# for another). Any step that cannot be done ends the script with one line saying why.
set -euo pipefail

me=gpu-check
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
requirements=scripts/gpu-check-requirements.txt
out=runs/gpu-check
check_args=()
fetch=0
need_cuda=1

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while (($#)); do
    case $1 in
        --out) [[ $# -ge 2 ]] || { echo "$me: --out needs a folder" >&2; exit 2; }; out=$2; shift 2 ;;
        --device) [[ $# -ge 2 ]] || { echo "$me: --device needs a value" >&2; exit 2; }
            [[ $2 == cpu ]] && need_cuda=0
            check_args+=(--device "$2"); shift 2 ;;
        --quick) check_args+=(--quick); shift ;;
        --fetch-wheels) fetch=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "$me: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
say() { printf '%s [%4ds] %s\n' "$me" "$SECONDS" "$*"; }
die() { printf '%s: %s\n' "$me" "$*" >&2; exit 1; }
log=$(mktemp "${TMPDIR:-/tmp}/$me.XXXXXX")
trap 'rm -f "$log"' EXIT
last_line() { grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-300; }

if ((fetch)); then
    pyver=${GPU_CHECK_PYTHON:-3.12}
    pip_py=$(command -v python3 || true)
    [[ -x .venv/bin/python ]] && pip_py=.venv/bin/python
    [[ -n $pip_py ]] || die "no python3 here to run pip download with"
    say "downloading the wheels of $requirements for CPython $pyver, x86_64, into .whl/"
    if ! "$pip_py" -m pip download -q --no-deps --only-binary=:all: --dest .whl \
        --python-version "$pyver" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -r "$requirements" >"$log" 2>&1; then
        die "pip download failed: $(last_line)"
    fi
    say "done: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry it along)"
    exit 0
fi

# --- 1. a Python whose torch sees a GPU ------------------------------------------------------
usable_torch() {  # Python >= 3.11 whose torch imports, and sees a GPU unless --device cpu
    "$1" -c 'import sys, torch
sys.exit(sys.version_info < (3, 11) or (int(sys.argv[1]) and not torch.cuda.is_available()))' \
        "$need_cuda" >/dev/null 2>&1
}
py=""
for cand in .venv/bin/python .venv-gpu/bin/python python3 python /opt/torch/.venv/bin/python3; do
    command -v "$cand" >/dev/null 2>&1 || continue
    if usable_torch "$cand"; then
        py=$(command -v "$cand")
        break
    fi
done
if [[ -z $py ]]; then
    say "no Python >= 3.11 with a CUDA-enabled torch here: making .venv-gpu (torch from the index)"
    base=""
    for cand in python3.12 python3.11 python3; do
        if command -v "$cand" >/dev/null 2>&1 \
            && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            base=$cand
            break
        fi
    done
    [[ -n $base ]] || die "no Python >= 3.11 on this machine (the harness needs one)"
    [[ -x .venv-gpu/bin/python ]] || "$base" -m venv .venv-gpu >"$log" 2>&1 \
        || die "cannot make a venv with $base: $(last_line)"
    # the pair the Makefile pins: a CUDA build on Linux x86_64
    if ! .venv-gpu/bin/python -m pip install -q --timeout 30 --retries 1 \
        torch==2.14.1 torchvision==0.29.1 >"$log" 2>&1 \
        || ! .venv-gpu/bin/python -m pip install -q --timeout 30 --retries 1 -e . >"$log" 2>&1; then
        die "cannot install torch and the harness's dependencies from the package index ($(last_line)); use a machine whose python3 has a CUDA build of torch"
    fi
    usable_torch .venv-gpu/bin/python \
        || die "torch is installed in .venv-gpu but sees no GPU (nvidia-smi: $(nvidia-smi -L 2>&1 | head -n 1))"
    py=$repo/.venv-gpu/bin/python
fi
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
say "python: $py (Python $pyver, torch $("$py" -c 'import torch; print(torch.__version__)'))"

# --- 2. what the check imports beyond torch ----------------------------------------------------
site=$repo/.gpu-check/site-py$pyver
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$py" - <<'EOF'
import importlib.util

# import name -> distribution, for everything the GPU check imports (harness.cli, fit, data)
needed = {
    "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow", "yaml": "pyyaml",
    "rich": "rich", "typer": "typer", "scipy": "scipy", "cv2": "opencv-python-headless",
    "pycocotools": "pycocotools", "albumentations": "albumentations", "albucore": "albucore",
    "pydantic": "pydantic", "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types", "typing_inspection": "typing-inspection",
    "simsimd": "simsimd", "stringzilla": "stringzilla",
}
print(" ".join(dist for mod, dist in needed.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [[ -n $missing ]]; then
    specs=()
    for dist in $missing; do
        pin=$(grep -i -E "^${dist}==" "$requirements" || true)
        specs+=("${pin:-$dist}")
    done
    if [[ -d .whl ]]; then
        say "installing ${specs[*]} from .whl/ into .gpu-check/"
        source_args=(--no-index --find-links .whl)
    else
        say "installing ${specs[*]} from the package index into .gpu-check/"
        source_args=(--timeout 15 --retries 1)
    fi
    if ! "$py" -m pip install -q --no-deps --no-compile --target "$site" "${source_args[@]}" \
        "${specs[@]}" >"$log" 2>&1; then
        die "missing ${specs[*]} and cannot install them ($(last_line)); where pip works run scripts/gpu-check.sh --fetch-wheels and bring .whl/ along"
    fi
fi
"$py" -c 'import harness.cli, harness.bench.gpu_report' >"$log" 2>&1 \
    || die "cannot import the harness with $py: $(last_line)"

# --- 3. the check ------------------------------------------------------------------------------
mkdir -p "$out"
say "running: python -m harness bench --only gpu ${check_args[*]} --out $out"
"$py" -m harness bench --only gpu "${check_args[@]}" --out "$out"
say "done: $out/gpu-check.json and $out/gpu-check.txt"
