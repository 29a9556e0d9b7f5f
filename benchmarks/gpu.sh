#!/usr/bin/env bash
# The checks a CUDA machine adds, in one go: the test suite with the GPU visible (Lightning's
# "auto" accelerator picks it, and tests/test_cuda.py runs), then the three benchmarks on the GPU.
#
#     bash benchmarks/gpu.sh [OUTDIR]      # logs and tables in OUTDIR (default: gpu-out)
#
# PARTS picks and orders the parts (default: tests global global-same-process step fit).
# Each part has a time cap (seconds, overridable: TESTS_CAP, GLOBAL_CAP, SAME_CAP, STEP_CAP, FIT_CAP) and
# the next part runs whatever the last one did; the exit status is the number of parts that failed.
# The tests run in parallel through pytest-xdist when it is installed, two CPU threads each.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
failed=0

part() {  # part NAME CAP COMMAND...: run COMMAND under a time cap, log to OUTDIR/NAME.txt
    local name=$1 cap=$2 start=$SECONDS
    shift 2
    echo "== $name (cap ${cap}s): $*"
    timeout "$cap" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c 'import lightning, torch; print("torch", torch.__version__, "lightning", lightning.__version__, "cuda", torch.cuda.is_available())'
    nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

xdist=()
"$py" -c 'import xdist' 2>/dev/null && xdist=(-n 8)
parts=${PARTS:-tests global global-same-process step fit}
for p in $parts; do
    case $p in
        tests) part tests "${TESTS_CAP:-170}" env OMP_NUM_THREADS=2 "$py" -m pytest -q -p no:cacheprovider "${xdist[@]}" -rs ;;
        global) part global "${GLOBAL_CAP:-80}" "$py" benchmarks/bench_global.py --device cuda --sizes 10,50,200 --repeats 1 --retries 0 ;;
        global-same-process) part global-same-process "${SAME_CAP:-60}" "$py" benchmarks/bench_global.py --device cuda --sizes 50,200 --repeats 2 --retries 0 --same-process ;;
        step) part step "${STEP_CAP:-240}" "$py" benchmarks/bench_step.py --device cuda --rounds 11 --round-seconds 0.25 ;;
        fit) part fit "${FIT_CAP:-90}" "$py" benchmarks/bench_fit.py --accelerator gpu --rounds 3 ;;
        *) echo "unknown part $p (tests, global, global-same-process, step, fit)"; exit 64 ;;
    esac
done

for f in $parts; do
    echo "---- $f (last lines)"
    tail -n 30 "$out/$f.txt"
done
exit "$failed"
