#!/usr/bin/env bash
# SemanticGAN (semgan_jax) on a Cloud TPU pod slice: create the slice, install the project on every
# host, put the dataset on every host, run stage 1 (train-gan) and stage 2 (train-encoder) on all
# hosts at once, and relaunch with --resume (recreating a preempted spot slice) until done.
# See experiments/launch/README.md. Run it from a machine with gcloud (in tmux: a stage takes days).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: experiments/launch/tpu_pod.sh [-h] [STEP ...]

Steps (default: create setup data gan encoder; each one can be repeated safely):
  create   gcloud compute tpus tpu-vm create (nothing to do when the slice is READY)
  setup    copy this checkout (or clone REPO_URL) to every worker, install Python 3.11, the package
           and jax[tpu] into VENV, mount the bucket with gcsfuse at MOUNT_DIR
  data     the dataset onto every worker's local disk: copy DATA_SRC (a prepared data dir), or
           `semgan prepare` (synthetic; others from the download copied from MANUAL_SRC)
  gan      `semgan train-gan ... --resume` on all workers, relaunched (after recreating a
           preempted slice and redoing setup + data) until the last iteration is checkpointed
  encoder  `semgan train-encoder ... --resume` likewise (stage 1 must be done)
  stop     SIGTERM the trainers on all workers (they save a checkpoint and exit)
  delete   delete the slice
  status   the slice's state, and each stage's latest checkpoint step / iterations

Environment (defaults in brackets):
  PROJECT, ZONE         GCP project and zone (required)
  TPU_NAME              slice name [semgan-<accelerator>]
  ACCELERATOR           accelerator type: v4-32, v5p-32, v5litepod-64, v6e-16, ... [v4-32]
  RUNTIME               TPU software version [tpu-ubuntu2204-base for v2/v3/v4,
                        v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e (v6e)]
  SPOT=1 | PREEMPTIBLE=1  create a spot / preemptible slice [on-demand]
  BUCKET                gs://bucket (or bucket) holding the runs (required unless MOUNT=none)
  MOUNT                 gcsfuse: mount BUCKET on every worker | none: WORKDIR is already a shared
                        filesystem (e.g. Filestore NFS) [gcsfuse]
  MOUNT_DIR             where the bucket is mounted on the workers [/mnt/<bucket>]
  CONFIG                stage-1 config [experiments/celebamask_256.py]
  ENCODER_CONFIG        stage-2 config [experiments/celebamask_256_encoder.py]
  RUN                   run name [<config name>]
  WORKDIR               run directory on the workers, shared by all of them [MOUNT_DIR/runs/RUN];
                        stage 1 goes to WORKDIR/stage1, stage 2 to WORKDIR/stage2
  BATCH                 global batch [the smallest multiple of the device count >= 16]
  MESH_DATA             devices on the 'data' mesh axis [-1 = all]
  GAN_ARGS, ENCODER_ARGS  more --config.FIELD=VALUE overrides for each stage (space separated)
  DATA_DIR              dataset root on each worker's local disk [~/semgan_data]
  DATA_SRC              gs:// copy of a prepared data dir to use instead of building it
  MANUAL_SRC            gs:// folder holding the dataset's download (docs/data.md), for `prepare`
  REPO_URL, REPO_REF    clone this repository (branch/tag) on the workers instead of copying
                        this checkout
  VENV                  virtualenv on the workers [~/semgan_venv]
  MAX_RESTARTS          relaunches per stage before giving up [20]
  NO_PROGRESS_LIMIT     give up after this many launches in a row that checkpoint nothing new [2]
  RESTART_DELAY         seconds between relaunches [60]

Example:
  PROJECT=my-proj ZONE=us-central2-b ACCELERATOR=v4-32 SPOT=1 BUCKET=gs://my-bucket \
    MANUAL_SRC=gs://my-bucket/downloads/celebamask GAN_ARGS=--config.data.num_labeled=1500 \
    experiments/launch/tpu_pod.sh
EOF
}

# --------------------------------------------------------------------------- shared helpers

die() { echo "tpu_pod.sh: $*" >&2; exit 1; }
log() { echo "[tpu_pod $(date +%H:%M:%S)] $*" >&2; }

# JAX devices of a TPU accelerator type: v2/v3 count TensorCores (one device each), v4/v5p count
# TensorCores with two per chip (one megacore device per chip), v5e/v6e count chips (one core).
tpu_devices() {
  local n=${1##*-}
  case $1 in
    v2-*|v3-*) echo "$n" ;;
    v4-*|v5p-*) echo $(( n / 2 )) ;;
    v5litepod-*|v5e-*|v6e-*) echo "$n" ;;
    *) echo "unknown accelerator type $1" >&2; return 1 ;;
  esac
}

# Hosts (= JAX processes) of a TPU accelerator type: 4 chips per host, except single-host
# v5e/v6e slices of up to 8 chips.
tpu_hosts() {
  local n=${1##*-}
  case $1 in
    v2-*|v3-*|v4-*|v5p-*) echo $(( n <= 8 ? 1 : n / 8 )) ;;
    v5litepod-*|v5e-*|v6e-*) echo $(( n <= 8 ? 1 : n / 4 )) ;;
    *) echo "unknown accelerator type $1" >&2; return 1 ;;
  esac
}

# The recipes' default global batch for D devices: the reference's 16, rounded up to a multiple
# of D (semgan_jax.parallel.check_batch_size needs batch % D == 0).
default_batch() { echo $(( ($1 + 15) / $1 * $1 )); }

default_runtime() {
  case $1 in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

# --------------------------------------------------------------------------- on a worker

md() { curl -sf --connect-timeout 5 --max-time 20 -H 'Metadata-Flavor: Google' "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }

# The slice's worker list as the TPU runtime reads it (metadata tpu-env), else from the endpoints.
worker_hostnames() {
  local hosts
  hosts=$(md tpu-env | sed -n "s/^TPU_WORKER_HOSTNAMES: *'\{0,1\}\([^']*\)'\{0,1\} *$/\1/p")
  [ -n "$hosts" ] || hosts=$(md worker-network-endpoints | tr ',' '\n' | awk -F: '{print $NF}' | paste -sd, -)
  echo "$hosts"
}

worker_defaults() {
  export PATH="$HOME/.local/bin:$PATH"
  : "${VENV:=$HOME/semgan_venv}"
  : "${DATA_DIR:=$HOME/semgan_data}"
  : "${MANUAL_DIR:=$HOME/semgan_download}"
  : "${LOG_DIR:=$HOME/semgan_logs}"
  : "${MESH_DATA:=-1}"
  : "${MOUNT:=none}"
  : "${GAN_ARGS:=}"
  : "${ENCODER_ARGS:=}"
  SEMGAN="$VENV/bin/semgan"
  PY="$VENV/bin/python"
  read -r -a gan_args <<< "$GAN_ARGS"
  read -r -a encoder_args <<< "$ENCODER_ARGS"
}

# A field of a config file after --config.* overrides: cfg_field CONFIG FIELD [OVERRIDE...]
cfg_field() {
  "$PY" - "$@" <<'EOF'
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
  "$PY" - "$1" <<'EOF'
import pathlib, sys
ckpt = pathlib.Path(sys.argv[1]) / "checkpoints"
print(max((int(p.name) for p in ckpt.iterdir() if p.name.isdigit()), default=-1) if ckpt.is_dir() else -1)
EOF
}

mount_bucket() {
  [ "$MOUNT" = gcsfuse ] || return 0
  if ! command -v gcsfuse >/dev/null; then
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
      | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" \
      | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
  fi
  mountpoint -q "$MOUNT_DIR" && return 0
  sudo mkdir -p "$MOUNT_DIR" && sudo chown "$(id -u):$(id -g)" "$MOUNT_DIR"
  # No metadata caching: every host must see the directories the others (orbax, process 0) make.
  # Renaming a directory (orbax's atomic commit of a checkpoint) needs --rename-dir-limit.
  gcsfuse --implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0 "$BUCKET_NAME" "$MOUNT_DIR"
}

worker_setup() {
  if [ ! -x "$PY" ]; then  # the TPU images ship Python 3.10; the pinned jax needs >= 3.11
    command -v uv >/dev/null || python3 -m pip install --user -q uv \
      || { sudo apt-get update -q && sudo apt-get install -y -q python3-pip && python3 -m pip install --user -q uv; }
    uv venv --python 3.11 "$VENV"
  fi
  uv pip install --python "$PY" -q -c constraints.txt -e ".[tpu]"
  mount_bucket
  "$PY" -c 'import jax, semgan_jax; print(f"jax {jax.__version__} and semgan_jax installed")'
}

worker_data() {
  local DATASET RESOLUTION
  DATASET=$(cfg_field "$CONFIG" data.name "${gan_args[@]}")
  RESOLUTION=$(cfg_field "$CONFIG" data.resolution "${gan_args[@]}")
  mkdir -p "$DATA_DIR"
  if [ -n "${DATA_SRC:-}" ]; then
    gcloud storage rsync --recursive "$DATA_SRC" "$DATA_DIR"
  elif [ "$DATASET" = synthetic ]; then
    "$SEMGAN" prepare synthetic --data-dir "$DATA_DIR" --resolution "$RESOLUTION"
  else
    [ -n "${MANUAL_SRC:-}" ] || die "$DATASET needs MANUAL_SRC (gs:// folder with the download, docs/data.md) or DATA_SRC"
    mkdir -p "$MANUAL_DIR"
    gcloud storage rsync --recursive "$MANUAL_SRC" "$MANUAL_DIR"
    "$SEMGAN" prepare "$DATASET" --manual-dir "$MANUAL_DIR" --data-dir "$DATA_DIR" --resolution "$RESOLUTION"
  fi
}

trainer_pid() {  # the pid of this worker's running trainer of stage $1, if any
  local pid
  pid=$(cat "$LOG_DIR/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa semgan "/proc/$pid/cmdline" && echo "$pid"
}

# Start this worker's process of a stage (or attach to the one still running, e.g. after the
# launcher's ssh session dropped) and wait for it; worker 0 shows its output.
worker_train() {
  local stage=$1 pid
  mkdir -p "$LOG_DIR"
  if ! pid=$(trainer_pid "$stage"); then
    mount_bucket  # again: a rebooted worker lost the mount, and would write a run of its own locally
    # The package calls jax.distributed.initialize() when TPU_WORKER_HOSTNAMES lists several
    # hosts; on GCE TPU VMs the list lives in the metadata, so put it into the environment.
    : "${TPU_WORKER_HOSTNAMES:=$(worker_hostnames)}"
    export TPU_WORKER_HOSTNAMES
    [ -n "$TPU_WORKER_HOSTNAMES" ] || log "warning: no worker list in the metadata; running as a single host"
    if [ "$stage" = gan ]; then
      nohup "$SEMGAN" train-gan --config "$CONFIG" --workdir "$WORKDIR/stage1" --resume \
        --config.data.data_dir="$DATA_DIR" --config.train.batch_size="$BATCH" \
        --config.train.mesh_data="$MESH_DATA" "${gan_args[@]}" >>"$LOG_DIR/gan.log" 2>&1 </dev/null &
    else
      nohup "$SEMGAN" train-encoder --config "$ENCODER_CONFIG" --workdir "$WORKDIR/stage2" --resume \
        --config.stage1="$WORKDIR/stage1" --config.train.batch_size="$BATCH" \
        --config.train.mesh_data="$MESH_DATA" "${encoder_args[@]}" >>"$LOG_DIR/encoder.log" 2>&1 </dev/null &
    fi
    pid=$!
    echo "$pid" > "$LOG_DIR/$stage.pid"
  fi
  if [ "$(md agent-worker-number || echo 0)" = 0 ]; then
    tail -n 20 --pid="$pid" -f "$LOG_DIR/$stage.log"
  else
    while kill -0 "$pid" 2>/dev/null; do sleep 10; done
  fi
}

worker_stop() {
  local stage pid
  for stage in gan encoder; do
    if pid=$(trainer_pid "$stage"); then
      kill -TERM "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 2; done
    fi
  done
}

# "LATEST TOTAL" of a stage: its newest checkpoint step and the iterations its config asks for.
worker_progress() {
  mount_bucket
  if [ "$1" = gan ]; then
    echo "$(latest_step "$WORKDIR/stage1") $(cfg_field "$CONFIG" train.iterations "${gan_args[@]}")"
  else
    echo "$(latest_step "$WORKDIR/stage2") $(cfg_field "$ENCODER_CONFIG" train.iterations "${encoder_args[@]}")"
  fi
}

on_worker() {
  worker_defaults
  case $1 in
    setup) worker_setup ;;
    data) worker_data ;;
    gan|encoder) worker_train "$1" ;;
    stop) worker_stop ;;
    progress-gan) worker_progress gan ;;
    progress-encoder) worker_progress encoder ;;
    *) die "unknown worker step $1" ;;
  esac
}

# --------------------------------------------------------------------------- on the launcher

launcher_defaults() {
  : "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}"
  : "${ACCELERATOR:=v4-32}"
  : "${TPU_NAME:=semgan-$ACCELERATOR}"
  : "${RUNTIME:=$(default_runtime "$ACCELERATOR")}"
  : "${MOUNT:=gcsfuse}"
  : "${CONFIG:=experiments/celebamask_256.py}"
  : "${ENCODER_CONFIG:=experiments/celebamask_256_encoder.py}"
  : "${RUN:=$(basename "$CONFIG" .py)}"
  : "${MESH_DATA:=-1}"
  : "${MAX_RESTARTS:=20}"
  : "${NO_PROGRESS_LIMIT:=2}"
  : "${RESTART_DELAY:=60}"
  BUCKET_NAME=${BUCKET:+${BUCKET#gs://}}
  BUCKET_NAME=${BUCKET_NAME%%/*}
  if [ "$MOUNT" = gcsfuse ]; then
    [ -n "$BUCKET_NAME" ] || die "set BUCKET (gs://...): checkpoints must go to storage every host shares"
    : "${MOUNT_DIR:=/mnt/$BUCKET_NAME}"
    : "${WORKDIR:=$MOUNT_DIR/runs/$RUN}"
  else
    : "${WORKDIR:?with MOUNT=none set WORKDIR to a directory every worker shares}"
  fi
  DEVICES=$(tpu_devices "$ACCELERATOR")
  : "${BATCH:=$(default_batch "$DEVICES")}"
  (( BATCH % DEVICES == 0 )) || die "BATCH=$BATCH is not a multiple of the $DEVICES devices of $ACCELERATOR"
  [ -f "$REPO_ROOT/$CONFIG" ] || die "no config $CONFIG in $REPO_ROOT"
  GC=(--project="$PROJECT" --zone="$ZONE")
  log "$ACCELERATOR: $(tpu_hosts "$ACCELERATOR") hosts, $DEVICES devices; global batch $BATCH ($((BATCH / DEVICES)) per device); run $WORKDIR"
}

# The worker-side command line: `cd` into the copy of the repo, forward the settings, run a step.
worker_cmd() {
  local v envs=()
  for v in CONFIG ENCODER_CONFIG WORKDIR BATCH MESH_DATA GAN_ARGS ENCODER_ARGS MOUNT MOUNT_DIR BUCKET_NAME \
           VENV DATA_DIR DATA_SRC MANUAL_SRC MANUAL_DIR SEMGAN_JAX_CACHE; do
    [ -n "${!v:-}" ] && envs+=("$v=${!v}")
  done
  [ ${#envs[@]} -gt 0 ] || envs=(SEMGAN_LAUNCH=tpu_pod)
  printf 'cd semgan_jax && env %s bash experiments/launch/tpu_pod.sh --on-worker %q' "$(printf '%q ' "${envs[@]}")" "$1"
}

ssh_workers() {  # ssh_workers WORKER COMMAND
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GC[@]}" --worker="$1" --quiet --command="$2"
}

tpu_state() {
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GC[@]}" --format='value(state)' 2>/dev/null || true
}

step_create() {
  local state tries=0
  while :; do
    state=$(tpu_state)
    case $state in
      READY) return 0 ;;
      CREATING|STARTING|RESTARTING|REPAIRING|REIMAGING)
        (( ++tries <= 60 )) || die "slice $TPU_NAME stuck in $state"
        log "slice $TPU_NAME is $state; waiting"; sleep 30 ;;
      "")
        local kind=()
        [ "${SPOT:-0}" = 1 ] && kind=(--spot)
        [ "${PREEMPTIBLE:-0}" = 1 ] && kind=(--preemptible)
        log "creating $TPU_NAME ($ACCELERATOR, $RUNTIME${kind:+, ${kind[*]}})"
        gcloud compute tpus tpu-vm create "$TPU_NAME" "${GC[@]}" --accelerator-type="$ACCELERATOR" \
          --version="$RUNTIME" "${kind[@]}" --scopes=https://www.googleapis.com/auth/cloud-platform || return 1
        return 0 ;;
      *)  # PREEMPTED, TERMINATED, STOPPED, ...: a spot slice does not come back, make a new one
        log "slice $TPU_NAME is $state: deleting it to create it again"
        step_delete || return 1 ;;
    esac
  done
}

step_delete() {
  [ -z "$(tpu_state)" ] || gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GC[@]}" --quiet
}

step_setup() {
  local prepare
  if [ -n "${REPO_URL:-}" ]; then
    prepare="rm -rf semgan_jax && git clone -q --depth 1 ${REPO_REF:+--branch $(printf %q "$REPO_REF")} $(printf %q "$REPO_URL") semgan_jax"
  else  # this checkout: tracked and untracked-but-not-ignored files
    local tgz
    tgz=$(mktemp /tmp/semgan_src.XXXXXX.tgz)
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard \
       | tar --null --ignore-failed-read -T - -czf "$tgz") || return 1
    gcloud compute tpus tpu-vm scp "$tgz" "$TPU_NAME":semgan_src.tgz "${GC[@]}" --worker=all --quiet || return 1
    rm -f "$tgz"
    prepare="rm -rf semgan_jax && mkdir semgan_jax && tar -xzf semgan_src.tgz -C semgan_jax"
  fi
  ssh_workers all "$prepare && $(worker_cmd setup)"
}

step_data() { ssh_workers all "$(worker_cmd data)"; }

step_stop() { [ "$(tpu_state)" != READY ] || ssh_workers all "$(worker_cmd stop)"; }

progress() {  # progress STAGE -> "LATEST TOTAL" read on worker 0 (the run directory is shared)
  ssh_workers 0 "$(worker_cmd "progress-$1")" 2>/dev/null | tail -n 1
}

# Run a stage on all workers until its last iteration is checkpointed: after a failure or a
# preemption, (re)create the slice if it is gone and relaunch with --resume.
step_train() {
  local stage=$1 restarts=0 stalled=0 before after total
  if [ "$stage" = encoder ]; then  # stage 2 trains against stage 1's final generator
    read -r before total <<< "$(progress gan || echo "-1 -1")"
    (( total > 0 && before >= total )) || die "stage 1 is not done (checkpoint $before of $total): run the gan step first"
  fi
  while :; do
    if [ "$(tpu_state)" != READY ] && ! { step_create && step_setup && step_data; }; then
      (( ++restarts <= MAX_RESTARTS )) || die "$stage: could not bring the slice up; gave up after $MAX_RESTARTS tries"
      log "$stage: could not bring the slice up (capacity?); trying again in ${RESTART_DELAY}s ($restarts/$MAX_RESTARTS)"
      sleep "$RESTART_DELAY"
      continue
    fi
    read -r before total <<< "$(progress "$stage" || echo "-1 -1")"
    if (( total > 0 && before >= total )); then log "$stage: done ($before/$total)"; return 0; fi
    log "$stage: launching on all workers (latest checkpoint ${before}, iterations ${total})"
    ssh_workers all "$(worker_cmd "$stage")" || log "$stage: ssh returned $?"
    read -r after total <<< "$(progress "$stage" || echo "-1 -1")"
    if (( total > 0 && after >= total )); then log "$stage: done ($after/$total)"; return 0; fi
    if (( after > before )); then stalled=0; else stalled=$(( stalled + 1 )); fi
    (( stalled < NO_PROGRESS_LIMIT )) || die "$stage: $stalled launches in a row saved no new checkpoint; see the log above (on a worker: ~/semgan_logs/$stage.log)"
    (( ++restarts <= MAX_RESTARTS )) || die "$stage: gave up after $MAX_RESTARTS relaunches"
    log "$stage: stopped at checkpoint $after of $total; relaunching with --resume in ${RESTART_DELAY}s ($restarts/$MAX_RESTARTS)"
    sleep "$RESTART_DELAY"
  done
}

step_status() {
  local state
  state=$(tpu_state)
  echo "slice $TPU_NAME: ${state:-absent}"
  if [ "$state" = READY ]; then
    echo "gan (latest total): $(progress gan)"
    echo "encoder (latest total): $(progress encoder)"
  fi
}

main() {
  if [ "${1:-}" = --on-worker ]; then
    on_worker "$2"
    return
  fi
  case ${1:-} in -h|--help) usage; return 0 ;; esac
  REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  command -v gcloud >/dev/null || die "gcloud is not installed"
  launcher_defaults
  trap 'log "interrupted: stopping the trainers (they save a checkpoint)"; step_stop; exit 130' INT TERM
  local steps=("$@") step
  [ ${#steps[@]} -gt 0 ] || steps=(create setup data gan encoder)
  for step in "${steps[@]}"; do
    case $step in
      create) step_create ;;
      setup) step_setup ;;
      data) step_data ;;
      gan|encoder) step_train "$step" ;;
      stop) step_stop ;;
      delete) step_delete ;;
      status) step_status ;;
      *) usage >&2; die "unknown step $step" ;;
    esac
  done
}

main "$@"
