#!/usr/bin/env bash
# The one prepared check for a session with a GPU: run it first, as one command, then give the machine back.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine: at most BUDGET seconds (default 540)
#   bash benchmarks/gpu_check.sh --tiny   # the same steps on the CPU at toy size (under 3 minutes; a test runs it)
#
# Steps, each written to <OUT>/<step>.txt (OUT: the device tool's output folder, else runs/gpu_check), all printed
# at the end with the device's name:
#   1. device: the card (nvidia-smi), torch and Lightning versions;
#   2. device_data: data on the device gives the host path's batches (indices, augmented images) under the seed;
#   3. throughput: a salun epoch of the module against a plain PyTorch loop on the same device;
#   4. sd_concept: concept erasure at Stable Diffusion 1.x scale (benchmarks/sd_concept_step.py): salun (pseudo
#      "replace", its mask at fit start), esd_x and fmn through TextToImageDiffusion and the Trainer with the SD 1.x
#      UNet (random weights; VAE and text encoder SD-shaped but small), bf16 autocast and gradient checkpointing: a
#      warm-up step, then two timed steps each, with the peak CUDA memory (--tiny: toy size on the CPU);
#   5. protocol: benchmarks/paper_protocol.py (the paper's CIFAR-10 protocol, random 10%), scaled by
#      PROTOCOL_SCALE (default 1.0), within what is left of the budget, with its table beside the paper's.
# Python packages missing on the device machine (diffusers, jsonargparse) are installed from .whl/ when present;
# the CIFAR-10 archive is read from ARCHIVE (default data/cifar10-jpg.tar.gz, else ../shared/data/...).
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; fi
OUT_DIR="${OUT:-runs/gpu_check}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-540}"
STARTED=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}${PYTHONPATH:+:}$PWD"
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
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

step device 60 "$PY" -c "
import subprocess, torch, lightning
print('torch', torch.__version__, 'lightning', lightning.__version__)
print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU (no CUDA)')
print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout if torch.cuda.is_available() else '')"

step device_data 120 "$PY" - <<'EOF'
import torch
from lightning.pytorch import Trainer
from salun_lightning import UnlearningDataModule

accelerator = "cuda" if torch.cuda.is_available() else "cpu"

def batches(on_device):
    data = UnlearningDataModule("digits", forget_fraction=0.1, batch_size=64, augment=True, stream="forget_retain",
                                data_on_device=on_device)
    data.trainer = Trainer(accelerator=accelerator, devices=1, logger=False)
    data.setup("fit")
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
  step throughput 120 "$PY" benchmarks/throughput.py --tiny --rounds 1 --workers 0 --accelerator cpu \
    --out "$OUT_DIR/throughput_runs"
  step sd_concept 60 "$PY" benchmarks/sd_concept_step.py --size tiny
  step protocol 120 "$PY" benchmarks/paper_protocol.py --tiny --out "$OUT_DIR/protocol_runs"
else
  step throughput 150 "$PY" benchmarks/throughput.py --model resnet18 --precision bf16-mixed --rounds 2 \
    --workers 8 --train-per-class 4500 --out "$OUT_DIR/throughput_runs"
  step sd_concept 240 "$PY" benchmarks/sd_concept_step.py --size sd --batch 4 --steps 2
  step protocol "$(left)" "$PY" benchmarks/paper_protocol.py --scenario random10 --seeds 0 \
    --epochs-scale "${PROTOCOL_SCALE:-1.0}" --archive "$ARCHIVE" --out "$OUT_DIR/protocol_runs"
fi

for name in device device_data throughput sd_concept protocol; do
  echo
  echo "######## $name"
  cat "$OUT_DIR/$name.txt"
done
echo
echo "gpu_check: $((SECONDS - STARTED)) s in all; files in $OUT_DIR"
