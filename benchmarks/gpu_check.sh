#!/usr/bin/env bash
# The one prepared check for a session with a GPU: run it first, as one command, then give the machine back.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine: at most BUDGET seconds (default 570)
#   bash benchmarks/gpu_check.sh --tiny   # the same steps on the CPU at toy size (under 3 minutes; a test runs it)
#
# Steps (STEPS, default all, in this order), each written to <OUT>/<step>.txt (OUT: the device tool's output
# folder, else runs/gpu_check), all printed at the end with the device's name:
#   1. device: the card (nvidia-smi), torch and Lightning versions;
#   2. device_data: data on the device gives the host path's batches (indices, augmented images) under the seed;
#   3. selection: saliency_mask against the double argsort on the gradients of the SD 1.x UNet (860M values;
#      benchmarks/sd_unet_salun.py): best time and peak extra CUDA memory of each;
#   4. sd_concept: concept erasure at Stable Diffusion 1.x scale (benchmarks/sd_concept_step.py): salun (pseudo
#      "replace", its mask at fit start: saliency pass per forget batch and selection), esd_x and fmn through
#      TextToImageDiffusion and the Trainer with the SD 1.x UNet (random weights; VAE and text encoder SD-shaped but
#      small), bf16 autocast, gradient checkpointing on and then off, then salun with the denoiser sharded by FSDP2
#      on the one GPU: a warm-up step, then two timed steps each, with the peak CUDA memory (--tiny: toy size on
#      the CPU);
#   5. throughput: a salun epoch of the module against a plain PyTorch loop on the same device;
#   6. protocol: benchmarks/paper_protocol.py (the paper's CIFAR-10 protocol, random 10%) with --parallel and what
#      is left of BUDGET as its budget: a 2-epoch calibration chooses the epochs scale (at most PROTOCOL_SCALE,
#      default 1.0), then its table beside the paper's and the original's and retrain's validation accuracy per
#      epoch (--tiny: the digits, salun and rl only).
# A second call on a warm machine can run some steps again: STEPS="selection sd_concept" bash benchmarks/gpu_check.sh
# The runs are written under RUNS_DIR (default <OUT>/runs with --tiny, else /tmp/gpu_check_runs, outside the folder
# the device tool sends back); their small files (metrics, per-epoch CSV logs, logs, report) come back as
# <OUT>/runs_small.tar.gz.
# Python packages missing on the device machine (diffusers, jsonargparse) are installed from .whl/ when present, and
# the project itself (callbacks/ is the package salun_lightning.callbacks) when it is not installed, both into a
# fresh folder;
# the CIFAR-10 archive is read from ARCHIVE (default data/cifar10-jpg.tar.gz, else ../shared/data/...).
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; fi
OUT_DIR="${OUT:-runs/gpu_check}"
if [[ $TINY == 1 ]]; then RUNS_DIR="${RUNS_DIR:-$OUT_DIR/runs}"; else RUNS_DIR="${RUNS_DIR:-/tmp/gpu_check_runs}"; fi
mkdir -p "$OUT_DIR" "$RUNS_DIR"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-570}"
STEPS="${STEPS:-device device_data selection sd_concept throughput protocol}"
STARTED=$SECONDS
SITE=$(mktemp -d)  # packages installed for this run only (a stale copy of the project elsewhere would shadow it)
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}${PYTHONPATH:+:}$PWD"
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && export PYTHONPATH="$SITE:$PYTHONPATH"
fi
if ! "$PY" -P -c "import salun_lightning.callbacks" 2>/dev/null; then  # a checkout without its install (the device)
  "$PY" -m pip install -q --no-deps --no-index --no-build-isolation --no-compile --target "$SITE" . \
    && export PYTHONPATH="$SITE:$PYTHONPATH"
fi
ARCHIVE="${ARCHIVE:-data/cifar10-jpg.tar.gz}"
[[ -f "$ARCHIVE" ]] || ARCHIVE=../shared/data/cifar10-jpg.tar.gz

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output and exit status into <OUT>/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  local begin=$SECONDS
  timeout "$limit" "$@" >"$OUT_DIR/$name.txt" 2>&1
  echo "exit status $?, $((SECONDS - begin)) s" >>"$OUT_DIR/$name.txt"
}
left() { echo $((BUDGET - (SECONDS - STARTED) - 15)); }
wanted() { [[ " $STEPS " == *" $1 "* ]]; }  # wanted NAME: NAME is one of the steps to run

wanted device && step device 60 "$PY" -c "
import subprocess, torch, lightning
print('torch', torch.__version__, 'lightning', lightning.__version__)
print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU (no CUDA)')
print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout if torch.cuda.is_available() else '')"

wanted device_data && step device_data 120 "$PY" -P - <<'EOF'
import torch
from lightning.pytorch import Trainer
from salun_lightning import UnlearningDataModule

accelerator = "cuda" if torch.cuda.is_available() else "cpu"

def batches(on_device):
    data = UnlearningDataModule("digits", forget_fraction=0.1, batch_size=64, augment=True, stream="forget_retain",
                                data_on_device=on_device)
    data.trainer = Trainer(accelerator=accelerator, devices=1, logger=False)
    data.setup("validate")  # draws the splits and writes nothing (a fit would open a run directory)
    device = data.trainer.strategy.root_device
    out = []
    for batch, _ in zip(data.train_dataloader(), range(5)):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out.append(data.on_after_batch_transfer(batch, 0))
    return out

same = all(torch.equal(a["index"].cpu(), b["index"].cpu()) and torch.equal(a["image"].cpu(), b["image"].cpu())
           for a, b in zip(batches(False), batches(True)))
print(f"data on {accelerator}: the host path's batches (indices and augmented images): {same}")
EOF

if [[ $TINY == 1 ]]; then
  wanted selection && step selection 60 "$PY" benchmarks/sd_unet_salun.py --size tiny --batch 2 --repeats 1
  wanted sd_concept && step sd_concept 90 "$PY" benchmarks/sd_concept_step.py --size tiny --steps 1 \
    --checkpointing both --fsdp
  wanted throughput && step throughput 120 "$PY" benchmarks/throughput.py --tiny --rounds 1 --workers 0 \
    --accelerator cpu --out "$RUNS_DIR/throughput"
  wanted protocol && step protocol 240 "$PY" benchmarks/paper_protocol.py --tiny --parallel --budget 200 \
    --methods salun rl --out "$RUNS_DIR/protocol"  # two methods are enough to check the script
else
  wanted selection && step selection 90 "$PY" benchmarks/sd_unet_salun.py --size sd --batch 8 --repeats 3
  wanted sd_concept && step sd_concept 200 "$PY" benchmarks/sd_concept_step.py --size sd --batch 4 --steps 2 \
    --checkpointing both --fsdp
  wanted throughput && step throughput 100 "$PY" benchmarks/throughput.py --model resnet18 --precision bf16-mixed \
    --rounds 2 --workers 8 --train-per-class 4500 --archive "$ARCHIVE" --out "$RUNS_DIR/throughput"
  PROTOCOL_BUDGET=$(( $(left) - 20 ))  # the protocol takes what is left: it chooses its epochs scale to fit
  wanted protocol && step protocol $((PROTOCOL_BUDGET + 15)) "$PY" benchmarks/paper_protocol.py --scenario random10 \
    --seeds 0 --parallel --budget "$PROTOCOL_BUDGET" --epochs-scale "${PROTOCOL_SCALE:-1.0}" --archive "$ARCHIVE" \
    --out "$RUNS_DIR/protocol"
fi
[[ -d "$RUNS_DIR/protocol" ]] && tar czf "$OUT_DIR/runs_small.tar.gz" --exclude='*.safetensors' --exclude='*.ckpt' \
  --exclude='*.png' --exclude='*.jpg' -C "$RUNS_DIR" protocol

for name in $STEPS; do
  echo
  echo "######## $name"
  cat "$OUT_DIR/$name.txt"
done
echo
echo "gpu_check: $((SECONDS - STARTED)) s in all; files in $OUT_DIR"
