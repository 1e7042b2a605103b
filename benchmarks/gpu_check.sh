#!/usr/bin/env bash
# One prepared GPU benchmark run (H100 / H200), about 7 minutes including torch.compile warm-ups.
#
# Run from the repository root on the GPU machine:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# The machine has PyTorch but not MONAI and friends: wheels in .whl/ (monai, pytorch-ignite,
# nibabel, fire, termcolor; tensorboard and its dependencies for the bundle stage) are installed
# into /tmp/site first, when present.
#
# Every stage is a separate `python -m pam_monai bench` process under `timeout`, so a stage that
# fails or hangs (a compilation, say) costs only its own time box and the others still run; the
# stages share one budget (BUDGET_S seconds, default 420) and are ordered by what the next step
# needs most (see benchmarks/README.md, "H100, 2026-11-27" and its second lease): variants of
# FPA's attention branch (benchmarks/fpa_branch_gpu.py) and FPA with the contiguous one, the
# bundle's whole training loop (fpa), the fast path without CUDA graphs (unet, fpa),
# the fp32 baseline, data / inference / HD95, larger batches; what was measured already runs only
# when named in ONLY. A 15-minute device lease fits two calls: the first
# with the default order (BUDGET_S=420), the second with ONLY= naming what the first left out.
# Then the per-stage JSON files are merged (U-Net ratios across stages: same card, same run) into
# $OUT/gpu_check.json, the tables printed, and everything logged to $OUT/gpu_check.log; the
# per-stage files travel as $OUT/stages.tar.gz (3 files in $OUT in all).
#
# Environment: OUT (default outputs/gpu_check), BUDGET_S (420), PY (python3), DEVICE (cuda),
# QUICK=1 (tiny shapes on any device: checks this script's Python path, e.g. on a CPU),
# ONLY="name name ..." (run only these stages, in the script's order).
set -u

START=$(date +%s)
OUT=${OUT:-outputs/gpu_check}
BUDGET_S=${BUDGET_S:-420}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
ONLY=${ONLY:-}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1

log() { echo "$@" | tee -a "$LOG"; }
# the stages into $OUT/stages.tar.gz, packed beside it and renamed: a call killed while packing
# keeps the archive of the stage before, not a cut one (the name is on $OUT's disk: mv is a rename)
pack() {
    tar -czf "$OUT/.stages.tar.gz.part" -C "$WORK" . 2>/dev/null && mv -f "$OUT/.stages.tar.gz.part" "$OUT/stages.tar.gz"
}
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed))); }

if ls .whl/*.whl >/dev/null 2>&1; then
    log "== installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    # one at a time: a wheel for another Python (grpcio is built per version) costs only itself
    # (pip's whole message, console and log: a `| grep -q .` ending the pipe cut it short by SIGPIPE)
    for whl in .whl/*.whl; do
        said=$("$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$whl" 2>&1)
        [ -n "$said" ] && log "$said" && log "   ($whl: see above)"
    done
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# the budget counts from here (the install is not a benchmark stage)
START=$(date +%s)

{ nvidia-smi || echo "nvidia-smi: not available"; } 2>&1 | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import os, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "| cpus", os.cpu_count())
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(0))
for m in ("monai", "ignite", "nibabel", "fire", "scipy", "tqdm", "tensorboard", "pam_monai"):
    try:
        mod = __import__(m)
        print(f"{m} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # report, do not stop: the stages record their own errors
        print(f"{m}: NOT importable: {e}")
EOF

if [ "$QUICK" = "1" ]; then
    COMMON=(--device "$DEVICE" --quick --size 72) # RFNA needs more than 64 pixels
    BIG=(--quick --size 72)
    HUGE=(--quick --size 72)
else
    COMMON=(--device "$DEVICE" --batch 50 --size 160 --steps 20 --warmup 5)
    BIG=(--batch 128 --size 160 --steps 10 --warmup 4)
    HUGE=(--batch 256 --size 160 --steps 10 --warmup 4)
fi

JSONS=()
PLANE_UNCHECKED="" # set when plane_check ran in this call and did not pass
# stage NAME LIMIT_S ARGS...: one bench process, time-boxed by LIMIT_S and by what is left of the budget
stage() {
    local name=$1 limit=$2
    shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        return
    fi
    if [ -n "$PLANE_UNCHECKED" ] && [[ $name == *plane* ]]; then
        log "== SKIP $name: $PLANE_UNCHECKED"
        return
    fi
    local l
    l=$(left)
    if ((l < 30)); then
        log "== SKIP $name: ${l}s of the budget left"
        return
    fi
    ((limit > l)) && limit=$l
    log "== $name (time box ${limit}s, $(elapsed)s elapsed)"
    if [ "$1" = "--script" ]; then # a benchmark script of its own: --script FILE ARGS...
        local script=$2
        shift 2
        timeout -k 15 "$limit" "$PY" "$script" "$@" --output "$WORK/$name.data" >"$WORK/$name.log" 2>&1
    else
        timeout -k 15 "$limit" "$PY" -m pam_monai bench "$@" --output "$WORK/$name.json" >"$WORK/$name.log" 2>&1
    fi
    local rc=$?
    cat "$WORK/$name.log" >>"$LOG"
    tail -n 25 "$WORK/$name.log"
    if ((rc == 124 || rc == 137)); then
        log "== $name: TIMED OUT after ${limit}s"
    elif ((rc != 0)); then
        log "== $name: FAILED (exit $rc)"
    fi
    [ -f "$WORK/$name.json" ] && JSONS+=("$WORK/$name.json")
    # after every stage: a call cut short still brings back what was measured
    pack
}

# extra NAME ...: a stage that runs only when ONLY names it
extra() {
    [[ " $ONLY " == *" $1 "* ]] && stage "$@"
}

TRAIN=(--stages train --reference=False --profile 2)
SOLO=(--modes fast "${TRAIN[@]}")
CG=(--compile_mode reduce-overhead)
# The fast path is bf16 + channels-last + fusible norm + up-sampling as GEMMs + FPA's dilated
# convolutions as taps + compile + fused AdamW; CG adds CUDA graphs. Measured on the H100 of
# 2026-11-27 (benchmarks/README.md), now extras: cg_unet, cg_fpa, cg_rfna, fast_rfna,
# cg_unet_b128, cg_fpa_b128, flip_sync, cg_unet_b256.
# 1. FPA's attention branches, where its time goes (16.8 ms of kernels against the U-Net's 2.1 for
#    the same four levels, H100 2026-11-27b): variants at level c2 (the attention branch on the
#    contiguous layout, then with its units as Triton plane kernels, first), then the whole FPA with
#    each at batch 128 with CUDA graphs (the fast path as it is: 2,323 slices/s there, against 3,000)
#    The plane kernels are checked against the reference on the GPU first (compiled Triton, never
#    run on a GPU before; checked in Triton's interpreter on the CPU only).
stage plane_check 90 --script benchmarks/plane_kernels_check.py $([ "$QUICK" = "1" ] && echo --device "$DEVICE")
# Kernels that plane_check ran and did not pass (wrong, not compiled, the fallback ran, timed out
# before its verdict) are not timed: their stages and variants would cost up to 4 of the 7 minutes
# (each compiles FPA or its c2 level first) for figures of a broken or absent kernel.
if [ -f "$WORK/plane_check.log" ] && ! grep -q "^plane kernels ok" "$WORK/plane_check.log"; then
    PLANE_UNCHECKED="plane_check did not pass on this machine (its log above): the plane kernels are not timed"
    log "== $PLANE_UNCHECKED; skipping the plane stages and fpa_c2_variants' fpa_plane* variants"
fi
C2_VARIANTS=fpa,fpa_plane,fpa_nchw,fpa_plane_small,fpa_plane_large,fpa_normfn,fpa_mk,fpa_aggr,fpa_cdt
[ -n "$PLANE_UNCHECKED" ] && C2_VARIANTS=$(tr ',' '\n' <<<"$C2_VARIANTS" | grep -v '^fpa_plane' | paste -sd, -)
stage cg_fpa_plane_b128 140 --device "$DEVICE" "${BIG[@]}" --networks fpa --modes fast+plane "${TRAIN[@]}" "${CG[@]}"
stage fpa_c2_variants 170 --script benchmarks/fpa_branch_gpu.py --levels c2 \
    --variants "$C2_VARIANTS" $([ "$QUICK" = "1" ] && echo --batch 2 --size 48 --steps 2 --warmup 1 --profile 0 --device "$DEVICE")
stage cg_fpa_nchwatt_b128 120 --device "$DEVICE" "${BIG[@]}" --networks fpa --modes fast+nchwatt "${TRAIN[@]}" "${CG[@]}"
# 2. the bundle's whole training loop (brats train.json as monai.bundle runs it: the loader, the
#    flips, MONAI's iteration, the handlers; no validation), FPA with the default log_every 10,
#    beside the bare steps above. Each run compiles its step (about 55 s for FPA on the H100 of
#    2026-11-27, whose stage with log_every 1 and 10 in 170 s ran out during the second compile of
#    the first run, for the epoch's smaller last batch); log_every 1 is the extra bundle_fpa_log1
stage bundle_fpa 200 "${COMMON[@]}" --networks fpa --stages bundle --bundle_slices 96 --bundle_log_every 10
# 2b. the same loop with CUDA graphs (the bundles' compile_mode=reduce-overhead, off by default:
#    RFNA's bare step gained 1.20x from them on the H100; not yet measured inside the bundle loop)
stage bundle_fpa_cg 200 "${COMMON[@]}" --networks fpa --stages bundle --bundle_slices 96 --bundle_log_every 10 "${CG[@]}"
# 3. the bundles' default (the fast path without CUDA graphs) on the same card as the CG rows
stage fast_unet 110 "${COMMON[@]}" --networks unet "${SOLO[@]}"
stage fast_fpa 130 "${COMMON[@]}" --networks fpa "${SOLO[@]}"
# 4. the plain baseline and the rest of the suite
stage eager_fp32 90 "${COMMON[@]}" --networks unet,fpa,rfna --modes fp32 --stages train
stage data_infer_hd95 100 "${COMMON[@]}" --networks unet,fpa --modes fp32 \
    --stages data,infer,hd95 --data_cases 3 --data_workers 0,8
# 5. larger batches
stage cg_fpa_b256 130 --device "$DEVICE" "${HUGE[@]}" --networks fpa "${SOLO[@]}" "${CG[@]}"
stage fast_unet_b128 110 --device "$DEVICE" "${BIG[@]}" --networks unet "${SOLO[@]}"
stage fast_fpa_b128 130 --device "$DEVICE" "${BIG[@]}" --networks fpa "${SOLO[@]}"
# 6. measured already, by name with ONLY=... (2026-11-27 on an H100, cg_unet_b256 on its second
#    lease; runs 1 and 2 of 2026-11-26 on an H200)
extra cg_unet 110 "${COMMON[@]}" --networks unet "${SOLO[@]}" "${CG[@]}"
extra cg_fpa 130 "${COMMON[@]}" --networks fpa "${SOLO[@]}" "${CG[@]}"
extra cg_rfna 130 "${COMMON[@]}" --networks rfna "${SOLO[@]}" "${CG[@]}"
extra fast_rfna 130 "${COMMON[@]}" --networks rfna "${SOLO[@]}"
extra cg_unet_b128 110 --device "$DEVICE" "${BIG[@]}" --networks unet "${SOLO[@]}" "${CG[@]}"
extra cg_fpa_b128 130 --device "$DEVICE" "${BIG[@]}" --networks fpa "${SOLO[@]}" "${CG[@]}"
extra cg_unet_b256 110 --device "$DEVICE" "${HUGE[@]}" --networks unet "${SOLO[@]}" "${CG[@]}"
# the bundle loop's flip must not wait for queued GPU work (pinned copy of its choice; seconds)
extra flip_sync 40 --script benchmarks/flip_sync_check.py
extra prev_fast_unet 150 "${COMMON[@]}" --networks unet --modes fast-cl-mm-taps "${TRAIN[@]}"
extra prev_fast_fpa 200 "${COMMON[@]}" --networks fpa --modes fast-cl-mm-taps "${TRAIN[@]}"
extra cl_unet 120 "${COMMON[@]}" --networks unet --modes fast-mm-taps "${TRAIN[@]}"
extra cl_gather_unet 110 "${COMMON[@]}" --networks unet --modes fast-mm+gather "${TRAIN[@]}"
extra cl_mm_cudnn_fpa 130 "${COMMON[@]}" --networks fpa --modes fast-taps "${TRAIN[@]}"
extra norm_blocks 150 --script benchmarks/norm_gpu_bench.py $([ "$QUICK" = "1" ] && echo --repeats 2 --batch 2 --levels 8x16 --device "$DEVICE")
extra bundle_fpa_log1 200 "${COMMON[@]}" --networks fpa --stages bundle --bundle_slices 96 --bundle_log_every 1
extra fast_unet_cdt 150 "${COMMON[@]}" --networks unet --modes fast "${TRAIN[@]}" --inductor coordinate_descent_tuning=True

log "== merged results ($(elapsed)s elapsed)"
"$PY" -c "import sys; from pam_monai.bench import merge; merge(*sys.argv[2:], output=sys.argv[1])" \
    "$OUT/gpu_check.json" "${JSONS[@]}" 2>&1 | tee -a "$LOG"
pack
rm -rf "$WORK"
log "== done in $(elapsed)s"
