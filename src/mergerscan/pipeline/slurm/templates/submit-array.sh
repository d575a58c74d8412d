#!/bin/bash
# Submit mergerscan's array mode: plan -> N shard tasks (afterok) -> finalize (afterok).
#   slurm/submit-array.sh N CATALOG -o OUT --frames DIR [process-catalog options]
# sbatch options for all three jobs:  MERGERSCAN_SBATCH="--account=abc --partition=cpu --time=04:00:00"
# ... for the shard tasks only:       MERGERSCAN_SHARD_SBATCH="--gres=gpu:1 --cpus-per-task=16"
#                                      (and add --gpus 1 to the process-catalog options)
# Prints: plan=JOBID shards=JOBID finalize=JOBID
# A shard that fails leaves finalize pending (DependencyNeverSatisfied).  Resubmit that shard alone
# and point finalize at it:
#   j=$(sbatch --parsable --array=7 slurm/shard.sbatch N CATALOG -o OUT [options])
#   scontrol update JobId=FINALIZE Dependency=afterok:$j
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N=${1:?usage: $0 N CATALOG -o OUT [process-catalog options]}
shift
[ "$N" -ge 1 ] 2>/dev/null || { echo "N must be a positive integer (number of shards)" >&2; exit 2; }
[ $# -gt 0 ] || { echo "usage: $0 N CATALOG -o OUT [process-catalog options]" >&2; exit 2; }
read -r -a common <<< "${MERGERSCAN_SBATCH:-}"
read -r -a shardopts <<< "${MERGERSCAN_SHARD_SBATCH:-}"

plan=$(sbatch --parsable "${common[@]}" "$here/plan.sbatch" "$@")
plan=${plan%%;*}
shards=$(sbatch --parsable "${common[@]}" "${shardopts[@]}" --dependency="afterok:$plan" \
         --array="0-$((N - 1))" "$here/shard.sbatch" "$N" "$@")
shards=${shards%%;*}
final=$(sbatch --parsable "${common[@]}" --dependency="afterok:$shards" "$here/finalize.sbatch" "$@")
final=${final%%;*}
echo "plan=$plan shards=$shards finalize=$final"
