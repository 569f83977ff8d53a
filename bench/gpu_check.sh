#!/usr/bin/env bash
# One prepared GPU check, at most 8 minutes, run as-is from the repository root on a CUDA machine:
#   bash bench/gpu_check.sh            # results in $OUT (the device tool's folder) or bench/results/gpu_check-<time>
# 1. the environment (nvidia-smi, torch, CUDA, bf16);
# 2. the bf16 matmul peak of GPU 0, the MFU denominator (bench/gpu_check.py peak);
# 3. fine-tuning throughput and MFU in bf16 (bench/gpu_check.py finetune: unitask's trainer, the default
#    encoder straight from its package, pretrain.enabled=false), at the default batch and at batch 256;
# 4. the LLM stage in bf16, if this unitask has `unitask llm` (extra args: $GPU_CHECK_LLM_ARGS; one
#    process, so not llm.fsdp.enabled, which the stage refuses outside torchrun);
# 5. with more than one GPU: NCCL all-reduce bandwidth, and `unitask finetune` under torchrun (DDP on nccl)
#    against one process with the same global batch; then the LLM stage under torchrun with FSDP2
#    (llm.fsdp.enabled=true, extra args: $GPU_CHECK_LLM_ARGS).
# Every step has its own timeout and the script stops starting steps once the 8 minutes are nearly spent;
# a failed step is recorded (status.tsv) and the others still run. Exit status: non-zero if any step failed.
set -euo pipefail

BUDGET=${GPU_CHECK_BUDGET:-470}   # seconds, under 8 minutes
START=$SECONDS
cd "$(dirname "$0")/.."
RESULTS=${OUT:-bench/results/gpu_check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
# its own MLflow store and output folders (under the project: paths must stay inside it), beside the real ones
SETS=(--set pretrain.enabled=false --set tracking.uri=sqlite:///mlflow/gpu_check.db
      --set tracking.artifact_location=mlflow/gpu_check-artifacts)
FAILED=0
printf 'step\tstatus\tseconds\n' > "$RESULTS/status.tsv"

left() { echo $(( BUDGET - (SECONDS - START) )); }

# step NAME LIMIT COMMAND...: runs COMMAND under `timeout` (at most what is left), logs to NAME.log
step() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  if (( remaining < 20 )); then
    printf '%s\tskipped (budget)\t0\n' "$name" >> "$RESULTS/status.tsv"; return 0
  fi
  (( limit > remaining )) && limit=$remaining
  local t0=$SECONDS rc=0
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1 || rc=$?
  tail -n 15 "$RESULTS/$name.log"
  if (( rc == 0 )); then status=ok; elif (( rc == 124 || rc == 137 )); then status="timeout ${limit}s"; else status="failed rc=$rc"; fi
  printf '%s\t%s\t%s\n' "$name" "$status" $(( SECONDS - t0 )) >> "$RESULTS/status.tsv"
  (( rc == 0 )) || FAILED=1
  return 0
}

step environment 30 bash -c "nvidia-smi; $PY - <<'EOF'
import torch, transformers
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)
assert torch.cuda.is_available(), 'no CUDA device visible to torch'
print('gpus', torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print('bf16', torch.cuda.is_bf16_supported())
import unitask; print('unitask', unitask.__file__)
EOF"
if ! grep -q $'^environment\tok' "$RESULTS/status.tsv"; then
  echo "gpu_check: no usable CUDA torch + unitask here; see $RESULTS/environment.log" >&2; exit 2
fi
GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')

# the prepared splits the benchmarks read (offline: the data packages of requirements-data.txt)
if [[ ! -f data/prepared/trec_coarse/train.parquet || ! -f data/prepared/bbc_topic/train.parquet ]]; then
  step prepare 120 $PY -m unitask.cli prepare "${SETS[@]}"
fi

step peak 60 $PY bench/gpu_check.py peak
PEAK=$($PY -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["peak_flops"])' "$RESULTS/peak.log" 2>/dev/null || echo "")
if [[ -n "$PEAK" ]]; then
  step finetune_bf16 120 $PY bench/gpu_check.py finetune --peak "$PEAK" --steps 30 --repeats 2 "${SETS[@]}"
  step finetune_bf16_batch256 90 $PY bench/gpu_check.py finetune --peak "$PEAK" --steps 20 --repeats 2 "${SETS[@]}" \
       --set finetune.batch_size=256
fi

if $PY -m unitask.cli llm --help > /dev/null 2>&1; then
  # shellcheck disable=SC2086  # GPU_CHECK_LLM_ARGS is a list of words on purpose
  step llm_bf16 120 $PY -m unitask.cli llm "${SETS[@]}" ${GPU_CHECK_LLM_ARGS:-}
else
  printf 'llm_bf16\tskipped (no `unitask llm` in this checkout)\t0\n' >> "$RESULTS/status.tsv"
fi

if (( GPUS > 1 )); then
  step allreduce_nccl 60 $PY -m torch.distributed.run --standalone --nproc_per_node="$GPUS" bench/gpu_check.py allreduce
  # the same updates: global batch 32 as one process and as GPUS processes of 32/GPUS
  DDP_SETS=("${SETS[@]}" --set finetune.max_steps=60 --set finetune.eval_strategy=steps --set finetune.eval_steps=60)
  step ddp_one_process 90 $PY -m unitask.cli finetune --task trec_coarse "${DDP_SETS[@]}" --set finetune.batch_size=32 \
       --set finetune.output=models/gpu_check/one --set paths.reports=reports/gpu_check/one
  step ddp_nccl 90 $PY -m torch.distributed.run --standalone --nproc_per_node="$GPUS" -m unitask.cli finetune --task trec_coarse \
       "${DDP_SETS[@]}" --set finetune.batch_size=$(( 32 / GPUS )) \
       --set finetune.output=models/gpu_check/ddp --set paths.reports=reports/gpu_check/ddp
  cp reports/gpu_check/one/finetune/trec_coarse.json "$RESULTS/ddp_one_process.json" 2>/dev/null || true
  cp reports/gpu_check/ddp/finetune/trec_coarse.json "$RESULTS/ddp_nccl.json" 2>/dev/null || true
  # shellcheck disable=SC2086  # GPU_CHECK_LLM_ARGS is a list of words on purpose
  step llm_fsdp 120 $PY -m torch.distributed.run --standalone --nproc_per_node="$GPUS" -m unitask.cli llm "${SETS[@]}" \
       --set llm.fsdp.enabled=true --set llm.zeroshot=false ${GPU_CHECK_LLM_ARGS:-} \
       --set llm.output=models/gpu_check/llm_fsdp --set llm.checkpoints=models/gpu_check/llm_fsdp-checkpoints \
       --set llm.metrics=reports/gpu_check/llm_fsdp/llm.json --set paths.reports=reports/gpu_check/llm_fsdp
  cp reports/gpu_check/llm_fsdp/llm.json "$RESULTS/llm_fsdp.json" 2>/dev/null || true
else
  printf 'ddp_nccl\tskipped (one GPU)\t0\n' >> "$RESULTS/status.tsv"
fi

{ echo; echo "total $(( SECONDS - START )) s of ${BUDGET} s"; } >> "$RESULTS/status.tsv"
column -t -s $'\t' "$RESULTS/status.tsv" || cat "$RESULTS/status.tsv"
echo "results: $RESULTS"
exit $FAILED
