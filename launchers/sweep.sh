#!/usr/bin/env bash
# Submit a sweep to SLURM and return at once: Hydra's submitit driver, which submits the sweep as one
# job array and then waits for every cell, runs inside a small CPU batch job, so this shell can close.
#
#   launchers/sweep.sh model=tiny_world data.size=240,1920 mastery=d0,d1,d2,d3,d4
#   SWEEP_DRIVER_SBATCH="--time=3-00:00:00 --partition=cpu" launchers/sweep.sh experiment=table2
#
# The arguments are those of `python -m sft_knowledge.run -m`; `hydra/launcher=slurm` is added unless
# one is given. Partition, account and QOS: the usual SBATCH_PARTITION / SBATCH_ACCOUNT / SBATCH_QOS
# (they reach the cells too), or conf/local/default.yaml. Watch with `python -m sft_knowledge.status
# <sweep dir>` (the driver's log names it); re-running the same command computes only missing cells.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(pwd)/.venv/bin/python}
LOGS=${SWEEP_LOG_DIR:-outputs/sweeps}
[[ -x $PYTHON ]] || { echo "sweep.sh: no python at $PYTHON (make install, or set PYTHON)" >&2; exit 1; }
[[ $* == *hydra/launcher=* ]] || set -- hydra/launcher=slurm "$@"
# The command line and SLURM itself (commands, controller, partition) are checked here, where the error reaches its
# user as one line, not in the driver's log after its job has waited in the queue.
"$PYTHON" -m sft_knowledge.overrides -m "$@"
mkdir -p "$LOGS"
# shellcheck disable=SC2086 # SWEEP_DRIVER_SBATCH holds several sbatch options
job=$(sbatch --parsable --job-name=sweep-driver --cpus-per-task=1 --mem=2G --time="${SWEEP_DRIVER_TIME:-2-00:00:00}" \
    --output="$LOGS/driver-%j.log" ${SWEEP_DRIVER_SBATCH:-} \
    --wrap "$(printf '%q ' "$PYTHON" -m sft_knowledge.run -m "$@")")
echo "sweep driver: SLURM job $job, log $LOGS/driver-$job.log"
