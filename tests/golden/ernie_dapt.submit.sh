#!/bin/bash
# Submit run ernie-dapt with plain sbatch: training, then the conversion (afterok), each recorded in the
# run directory at once, so `python -m ernie_cluster status` shows them while they wait in the queue.
# Rendered from templates/submit.sh.j2 next to train.sbatch and convert.sbatch.
# First it freezes the code the jobs run into the run directory (kept when the run has an identical copy; a
# different installation is refused unless you pass --new-code, as with `submit --resume`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run_dir=/shared/runs/ernie-dapt
mkdir -p "$run_dir/slurm"  # Slurm opens --output before the script runs
/shared/envs/ernie/bin/python -m ernie_cluster.frozen_code ensure "$run_dir" /shared/envs/ernie/bin/python "$@"
train=$(sbatch --parsable "$here/train.sbatch")
train=${train%%;*}
/shared/envs/ernie/bin/python -m ernie_cluster.rundir register-job "$run_dir" train "$train" ernie-dapt
echo "training job: $train"
convert=$(sbatch --parsable --dependency="afterok:$train" --kill-on-invalid-dep=yes "$here/convert.sbatch")
convert=${convert%%;*}
/shared/envs/ernie/bin/python -m ernie_cluster.rundir register-job "$run_dir" convert "$convert" ernie-dapt
echo "conversion job: $convert (afterok:$train)"

