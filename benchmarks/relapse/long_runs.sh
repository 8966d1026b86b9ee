#!/bin/bash
# The long runs of issue 14: a config trained for STEPS steps without early stopping, validation
# after every 100-step epoch logged to benchmarks/relapse/results/NAME.jsonl.
#   benchmarks/relapse/long_runs.sh NAME CONFIG SEED THREADS STEPS [memnet fit options...]
# e.g. benchmarks/relapse/long_runs.sh ntm_copy_s2 configs/ntm/copy.yaml 2 1 10000
# The config's callbacks are replaced by RelapseWatch, ConvergenceDecay (the fix; FIX=0 leaves it out,
# for the runs before the fix; FACTOR=f sets its factor, default 0.1) and the log of validations.
set -e
name=$1; config=$2; seed=$3; threads=$4; steps=$5; shift 5
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/benchmarks/relapse/results
mkdir -p "$out" /tmp/memnet_relapse
rm -f "$out/$name.jsonl"
cat > /tmp/memnet_relapse/$name.yaml <<YAML
trainer:
  max_steps: $steps
  enable_progress_bar: false
  callbacks:
    - class_path: memnet.callbacks.RelapseWatch
$( [ "${FIX:-1}" = 1 ] && printf "    - class_path: memnet.callbacks.ConvergenceDecay\n      init_args: {factor: ${FACTOR:-0.1}}" )
    - class_path: vallog.ValidationLog
      init_args:
        path: $out/$name.jsonl
model:
  init_args:
    scheduler:
      init_args:
        total_steps: $steps
YAML
cd "$root"
start=$(date +%s)
set +e
OMP_NUM_THREADS=$threads PYTHONPATH=$root:$root/benchmarks/relapse memnet fit --config "$config" \
  --config /tmp/memnet_relapse/$name.yaml --seed_everything "$seed" --data.init_args.seed "$seed" \
  --trainer.default_root_dir /tmp/memnet_relapse/runs "$@" > /tmp/memnet_relapse/$name.log 2>&1
echo "rc=$? wall=$(( $(date +%s) - start ))s" >> /tmp/memnet_relapse/$name.log
