"""Time and peak extra memory of saliency_mask versus the upstream double-argsort selection.

Each measurement runs in a fresh child process: the saliency is built, the peak-RSS counter is reset, the
selection runs, and the peak resident memory above the pre-selection level is the "extra" memory; the time is
the best of two further runs in the same process. Sizes: the
parameter shapes of the CIFAR ResNet-18 (11.2M) and those shapes repeated 9 times (100.5M).

    python benchmarks/mask_threshold.py [--repeats 3] [--sizes 11M 100M]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import queue as queue_module
import signal
import statistics
import time

import torch

COPIES = {"11M": 1, "100M": 9}  # size name -> how many times the ResNet-18 parameter shapes are repeated


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def reference_mask(saliency: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """The upstream selection: concatenate, rank every value with a double argsort, keep the top ranks."""
    flat = torch.cat([value.reshape(-1) for value in saliency.values()])
    ranks = torch.argsort(torch.argsort(flat))
    keep = int(len(flat) * ratio)
    kept = ranks >= len(flat) - keep
    masks, offset = {}, 0
    for name, value in saliency.items():
        masks[name] = kept[offset : offset + value.numel()].view(value.shape)
        offset += value.numel()
    return masks


def make_saliency(size: str) -> dict[str, torch.Tensor]:
    from salun_lightning.models import cifar_resnet18

    with torch.device("meta"):
        shapes = [(name, p.shape) for name, p in cifar_resnet18(10).named_parameters()]
    copies = COPIES[size]
    generator = torch.Generator().manual_seed(0)
    return {f"copy{c}.{name}": torch.rand(shape, generator=generator) for c in range(copies) for name, shape in shapes}


def _measure(method: str, size: str, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    from salun_lightning.callbacks import saliency_mask

    saliency = make_saliency(size)
    select = saliency_mask if method == "saliency_mask" else reference_mask
    select({"warm-up": torch.rand(1000)}, 0.5)  # library loading is not part of the measurement
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak resident set size (VmHWM) to the current size
    masks = select(saliency, 0.5)
    peak = _rss_kib("VmHWM")
    seconds = []
    for _ in range(2):  # time the runs after the first: page faults of fresh allocations count once per process
        del masks
        start = time.perf_counter()
        masks = select(saliency, 0.5)
        seconds.append(time.perf_counter() - start)
    seconds = min(seconds)
    total = sum(v.numel() for v in saliency.values())
    queue.put({"seconds": seconds, "extra_mib": (peak - before) / 1024, "kept": sum(int(m.sum()) for m in masks.values()), "N": total})


def measure(method: str, size: str, poll_seconds: float = 1.0) -> dict:
    """Run ``_measure`` in a fresh spawned child and return its result.

    Raises:
        RuntimeError: if the child exits without a result (an exception in it, or killed, e.g. out of memory).
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(method, size, queue))
    process.start()
    try:
        while True:
            alive = process.is_alive()  # checked before the wait, so a result put just before exiting is still read
            try:
                result = queue.get(timeout=poll_seconds)
                break
            except queue_module.Empty:
                if not alive:
                    process.join()
                    raise RuntimeError(
                        f"measuring {method} at size {size} failed: the child process exited with code "
                        f"{_describe_exit(process.exitcode)} without a result (its traceback, if any, is above)"
                    ) from None
        process.join()
    finally:
        if process.is_alive():  # e.g. Ctrl-C in the parent: do not leave the child running
            process.kill()
            process.join()
    return result


def _describe_exit(code: int | None) -> str:
    if code == -signal.SIGKILL:
        return f"{code} (killed by SIGKILL, likely out of memory)"
    if code is not None and code < 0:
        return f"{code} (killed by {signal.Signals(-code).name})"
    return str(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sizes", nargs="+", default=list(COPIES), choices=list(COPIES), help="parameter counts to measure"
    )
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {mp.cpu_count()} CPUs, torch {torch.__version__}, {args.repeats} repeats")
    print("| size | N | saliency_mask s | argsort s | speed-up | saliency_mask extra MiB | argsort extra MiB | memory ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    results = {}
    for size in args.sizes:
        runs = {"saliency_mask": [], "argsort": []}
        for _ in range(args.repeats):  # alternate so that drift affects both alike
            for method in runs:
                runs[method].append(measure(method, size))
        ours = {k: statistics.median(r[k] for r in runs["saliency_mask"]) for k in ("seconds", "extra_mib")}
        ref = {k: statistics.median(r[k] for r in runs["argsort"]) for k in ("seconds", "extra_mib")}
        n = runs["saliency_mask"][0]["N"]
        assert runs["saliency_mask"][0]["kept"] == n // 2
        print(
            f"| {size} | {n:,} | {ours['seconds']:.3f} | {ref['seconds']:.3f} | {ref['seconds'] / ours['seconds']:.1f}x "
            f"| {ours['extra_mib']:.1f} | {ref['extra_mib']:.1f} | {ours['extra_mib'] / ref['extra_mib']:.3f} |"
        )
        results[size] = {"saliency_mask": ours, "argsort": ref, "N": n}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
