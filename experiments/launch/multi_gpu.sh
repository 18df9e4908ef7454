#!/usr/bin/env bash
# SemanticGAN (semgan_jax) on one machine with N GPUs: one process drives all local GPUs (the
# 'data' mesh spans them; no jax.distributed needed). Prepares the data, runs stage 1
# (train-gan) then stage 2 (train-encoder), and relaunches a crashed stage with --resume.
# See experiments/launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: experiments/launch/multi_gpu.sh [-h] [STEP ...]

Steps (default: data gan encoder, after install when INSTALL is set):
  install  make VENV (if missing) and pip install the package with its INSTALL extra (the JAX
           CUDA plugin; INSTALL=cuda12 or cuda13) at constraints.txt's versions
  data     `semgan prepare` the config's dataset into DATA_DIR (synthetic: no download; others
           from MANUAL_DIR; skipped when MANUAL_DIR is unset and the data is already there)
  gan      `semgan train-gan ... --resume` until the last iteration is checkpointed; a crash
           (non-zero exit) is relaunched with --resume, at most MAX_RESTARTS times
  encoder  `semgan train-encoder ... --resume` likewise, against RUN_DIR/stage1

Environment (defaults in brackets):
  CONFIG             stage-1 config [experiments/celebamask_256.py]
  ENCODER_CONFIG     stage-2 config [experiments/celebamask_256_encoder.py]
  RUN_DIR            run directory: RUN_DIR/stage1, RUN_DIR/stage2 [runs/<config name>]
  DATA_DIR           prepared data root [~/tensorflow_datasets]
  MANUAL_DIR         the dataset's download (docs/data.md), for the data step
  NUM_GPUS           GPUs to use [all: CUDA_VISIBLE_DEVICES, else nvidia-smi -L]
  BATCH              global batch [the smallest multiple of NUM_GPUS >= 16]
  MESH_DATA          devices on the 'data' mesh axis [-1 = all]
  GAN_ARGS, ENCODER_ARGS  more --config.FIELD=VALUE overrides for each stage (space separated)
  VENV               virtualenv [.venv]; PYTHON makes it [python3.11]
  INSTALL            cuda12 | cuda13: run the install step first [none]
  MAX_RESTARTS       relaunches per stage after crashes [5]
  NO_PROGRESS_LIMIT  give up after this many crashes in a row with no new checkpoint [2]
  RESTART_DELAY      seconds before a relaunch [30]
  XLA_PYTHON_CLIENT_MEM_FRACTION  GPU memory JAX preallocates [0.90]
  SEMGAN_JAX_CACHE   persistent XLA compilation cache [~/.cache/semgan_jax/xla]

Example (8 GPUs, 1500 labels, 8 hours per launch):
  MANUAL_DIR=~/dl/celebamask GAN_ARGS="--config.data.num_labeled=1500 --config.log.max_minutes=480" \
    experiments/launch/multi_gpu.sh
EOF
}

die() { echo "multi_gpu.sh: $*" >&2; exit 1; }
log() { echo "[multi_gpu $(date +%H:%M:%S)] $*" >&2; }

# The recipes' default global batch for D devices: the reference's 16, rounded up to a multiple
# of D (semgan_jax.parallel.check_batch_size needs batch % D == 0).
default_batch() { echo $(( ($1 + 15) / $1 * $1 )); }

count_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L | grep -c '^GPU'
  else
    echo 0
  fi
}

# A field of a config file after --config.* overrides: cfg_field CONFIG FIELD [OVERRIDE...]
cfg_field() {
  "$VENV/bin/python" - "$@" <<'EOF'
import sys
from semgan_jax.config import apply_overrides, load_config_file
path, field, *overrides = sys.argv[1:]
node = apply_overrides(load_config_file(path), [o for o in overrides if o.startswith("--config.")])
for key in field.split("."):
    node = node[key]
print(node)
EOF
}

# The newest checkpoint step in a run directory (-1: none).
latest_step() {
  "$VENV/bin/python" - "$1" <<'EOF'
import pathlib, sys
ckpt = pathlib.Path(sys.argv[1]) / "checkpoints"
print(max((int(p.name) for p in ckpt.iterdir() if p.name.isdigit()), default=-1) if ckpt.is_dir() else -1)
EOF
}

step_install() {
  case ${INSTALL:-} in
    cuda12|cuda13) ;;
    *) die "INSTALL must be cuda12 or cuda13 for the install step" ;;
  esac
  [ -x "$VENV/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[$INSTALL]"
}

step_data() {
  local DATASET RESOLUTION
  DATASET=$(cfg_field "$CONFIG" data.name "${gan_args[@]}")
  RESOLUTION=$(cfg_field "$CONFIG" data.resolution "${gan_args[@]}")
  if [ "$DATASET" = synthetic ]; then
    "$SEMGAN" prepare synthetic --data-dir "$DATA_DIR" --resolution "$RESOLUTION"
  elif [ -n "${MANUAL_DIR:-}" ]; then
    "$SEMGAN" prepare "$DATASET" --manual-dir "$MANUAL_DIR" --data-dir "$DATA_DIR" --resolution "$RESOLUTION"
  else
    log "MANUAL_DIR unset: using $DATASET as already prepared in $DATA_DIR"
  fi
}

STOP=""
child=""
on_signal() {  # Ctrl-C / SIGTERM: let the trainer save a checkpoint, then stop (no relaunch)
  STOP=1
  [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || true
}

# run_stage WORKDIR TOTAL COMMAND...: run until checkpoint TOTAL exists; relaunch after a crash.
run_stage() {
  local workdir=$1 total=$2 restarts=0 stalled=0 before after rc
  shift 2
  while :; do
    before=$(latest_step "$workdir")
    if (( before >= total )); then log "$workdir: done ($before/$total)"; return 0; fi
    log "$workdir: launching (latest checkpoint $before of $total): $*"
    rc=0
    "$@" &
    child=$!
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do wait "$child" || rc=$?; done  # a signal interrupted wait
    child=""
    after=$(latest_step "$workdir")
    if (( after >= total )); then log "$workdir: done ($after/$total)"; return 0; fi
    [ -z "$STOP" ] || die "stopped at checkpoint $after; run the same command again to continue"
    case $rc in
      0) die "$workdir stopped at checkpoint $after of $total (log.max_minutes or a signal to the trainer); run again to continue" ;;
      2) die "semgan refused the command line or config (exit 2)" ;;
    esac
    if (( after > before )); then stalled=0; else stalled=$(( stalled + 1 )); fi
    (( stalled < NO_PROGRESS_LIMIT )) || die "$stalled launches in a row failed (exit $rc) without a new checkpoint"
    (( ++restarts <= MAX_RESTARTS )) || die "gave up after $MAX_RESTARTS relaunches (last exit $rc)"
    log "exit $rc at checkpoint $after; relaunching with --resume in ${RESTART_DELAY}s ($restarts/$MAX_RESTARTS)"
    sleep "$RESTART_DELAY"
  done
}

step_gan() {
  local total
  total=$(cfg_field "$CONFIG" train.iterations "${gan_args[@]}")
  run_stage "$RUN_DIR/stage1" "$total" \
    "$SEMGAN" train-gan --config "$CONFIG" --workdir "$RUN_DIR/stage1" --resume \
      --config.data.data_dir="$DATA_DIR" --config.train.batch_size="$BATCH" \
      --config.train.mesh_data="$MESH_DATA" "${gan_args[@]}"
}

step_encoder() {
  local total stage1
  total=$(cfg_field "$CONFIG" train.iterations "${gan_args[@]}")
  stage1=$(latest_step "$RUN_DIR/stage1")
  (( stage1 >= total )) || die "stage 1 is not done (checkpoint $stage1 of $total): run the gan step first"
  total=$(cfg_field "$ENCODER_CONFIG" train.iterations "${encoder_args[@]}")
  run_stage "$RUN_DIR/stage2" "$total" \
    "$SEMGAN" train-encoder --config "$ENCODER_CONFIG" --workdir "$RUN_DIR/stage2" --resume \
      --config.stage1="$RUN_DIR/stage1" --config.train.batch_size="$BATCH" \
      --config.train.mesh_data="$MESH_DATA" "${encoder_args[@]}"
}

main() {
  case ${1:-} in -h|--help) usage; return 0 ;; esac
  cd "$(dirname "${BASH_SOURCE[0]}")/../.."
  : "${CONFIG:=experiments/celebamask_256.py}"
  : "${ENCODER_CONFIG:=experiments/celebamask_256_encoder.py}"
  : "${RUN_DIR:=runs/$(basename "$CONFIG" .py)}"
  : "${DATA_DIR:=$HOME/tensorflow_datasets}"
  : "${MESH_DATA:=-1}"
  : "${VENV:=.venv}"
  : "${MAX_RESTARTS:=5}"
  : "${NO_PROGRESS_LIMIT:=2}"
  : "${RESTART_DELAY:=30}"
  : "${GAN_ARGS:=}"
  : "${ENCODER_ARGS:=}"
  read -r -a gan_args <<< "$GAN_ARGS"
  read -r -a encoder_args <<< "$ENCODER_ARGS"
  RUN_DIR=$(realpath -m "$RUN_DIR")    # absolute: stage 2 finds stage 1 by this path
  DATA_DIR=$(realpath -m "$DATA_DIR")  # recorded in stage 1's config.json, read again by stage 2
  SEMGAN="$VENV/bin/semgan"

  # One process: keep JAX from joining a multi-process job (parallel.maybe_initialize_distributed).
  if [ -n "${JAX_COORDINATOR_ADDRESS:-}" ] || (( ${SLURM_NTASKS:-1} > 1 )); then
    die "this recipe runs one process; for several nodes / tasks use experiments/launch/slurm.sbatch"
  fi
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
  export SEMGAN_JAX_CACHE="${SEMGAN_JAX_CACHE:-$HOME/.cache/semgan_jax/xla}"

  local steps=("$@") step
  if [ ${#steps[@]} -eq 0 ]; then
    steps=(data gan encoder)
    [ -z "${INSTALL:-}" ] || steps=(install "${steps[@]}")
  fi
  if [ "${steps[0]}" != install ]; then
    [ -x "$SEMGAN" ] || die "$SEMGAN not found: set VENV, or INSTALL=cuda12 to make it"
  fi
  : "${NUM_GPUS:=$(count_gpus)}"
  (( NUM_GPUS > 0 )) || die "no GPU found (set NUM_GPUS to override)"
  local devices=$NUM_GPUS
  (( MESH_DATA <= 0 )) || devices=$MESH_DATA
  : "${BATCH:=$(default_batch "$devices")}"
  (( BATCH % devices == 0 )) || die "BATCH=$BATCH is not a multiple of the $devices devices on the mesh"
  log "$NUM_GPUS GPUs, global batch $BATCH ($((BATCH / devices)) per GPU); run $RUN_DIR; data $DATA_DIR"

  trap on_signal INT TERM
  for step in "${steps[@]}"; do
    case $step in
      install) step_install ;;
      data) step_data ;;
      gan) step_gan ;;
      encoder) step_encoder ;;
      *) usage >&2; die "unknown step $step" ;;
    esac
    [ -z "$STOP" ] || die "interrupted during the $step step"
  done
}

main "$@"
