"""Benchmark: peak response maps of all peaks in one batched backward vs one backward per peak.

    PYTHONPATH=workflow python benchmarks/prm_batched.py [--repeats 3] [--threads 2] \
        [--models lite0_demo] [--at input deep]

For each model (the tiny classifier; the demo's EfficientNet-Lite0 at 224 px, stride 16;
ResNet-50 at 448 px, stride 32 as in PRM's reference; all random weights), each place the maps
are taken (`--at`: input = the image as PRM, deep = the model's DEEP_LAYER, peaks.response_layer)
and 1, 5 and 20 peaks per image, on the same image and the same peaks:
  batched  PeakBackprop(batched=True): one forward, then torch.func.vmap over the vjp (all
           peaks in one backward pass)
  loop     PeakBackprop(batched=False): one forward, then one autograd backward per peak
           (retain_graph), input gradients only, the strong form of PRM's reference loop
  fwd_bwd  one ordinary forward + backward to the input (the unit of cost)
Each time includes the forward pass. Prints JSON: median seconds over the repeats (wall and
process CPU time: on a shared machine the CPU time is the steadier figure), the speed-ups
loop / batched, both relative to fwd_bwd, and the largest difference between maps.

Measured (2-core shared CPU, 1 thread, torch 2.14; CPU-time speed-ups loop / batched at 1 / 5 /
20 peaks, maps equal to 2e-7): lite0_demo (224 px) at the input 0.83 / 1.57 / 2.65 (20 maps:
8.6 forward+backward units batched, 22.8 looped), at blocks.5 0.74 / 1.03 / 2.08; resnet50_448
at the input 0.96 / 1.64 / 2.52 (20 maps 6.0 vs 15.1 CPU-s), at layer3 0.94 / 1.40 / 2.45.
With --glibc-default lite0 at the input reaches only 1.34 at 20 peaks (ResNet-50 1.08): the
batched pass's large tensors were page-faulted afresh on every allocation. The goal of >= 3x at
20 peaks is not met on CPU: batching shares each layer's denominator conv(X - min X, W+) and
batches the per-peak convolutions, but the per-peak elementwise products stay memory-bound;
at 1 peak the vmap machinery costs ~25% more than one plain backward.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from tag2mask.classifier.model import PeakClassifier  # noqa: E402
from tag2mask.core.cpu_memory import keep_freed_memory  # noqa: E402
from tag2mask.peaks.prm import PeakBackprop  # noqa: E402

MODELS = {  # name: (backbone, stride, classes, input size)
    "tiny_demo": ("tiny", 8, 6, 128),
    "lite0_demo": ("efficientnet_lite0", 16, 6, 224),
    "resnet50_448": ("resnet50", 32, 20, 448),
}
DEEP_LAYER = {  # a deep peaks.response_layer of each model (lite0: the demo's)
    "tiny_demo": "backbone.features.6",
    "lite0_demo": "backbone.net.blocks.5",
    "resnet50_448": "backbone.features.6",
}


def fwd_bwd(model, image):
    x = image.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    return g


def peaks_for(maps, n, seed):
    g = torch.Generator().manual_seed(seed)
    c, h, w = maps.shape[1:]
    return torch.stack([torch.randint(0, c, (n,), generator=g),
                        torch.randint(0, h, (n,), generator=g),
                        torch.randint(0, w, (n,), generator=g)], 1)


def timed(fn):
    """(wall seconds, process CPU seconds, result) of fn()."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return time.perf_counter() - t, time.process_time() - c, out


def bench_model(name, repeats, peak_counts, upsample, device, at="input"):
    backbone, stride, classes, size = MODELS[name]
    layer = DEEP_LAYER[name] if at == "deep" else None
    torch.manual_seed(0)
    model = PeakClassifier(backbone, [f"c{i}" for i in range(classes)], stride=stride).eval()
    model.to(device).requires_grad_(False)
    image = torch.rand(1, 3, size, size, device=device)
    maps = PeakBackprop(model, image, upsample=upsample).upsampled_maps
    fwd_bwd(model, image)  # warm-up (allocator, kernels)
    units = [timed(lambda: fwd_bwd(model, image))[:2] for _ in range(repeats)]
    unit = statistics.median(u[0] for u in units)
    unit_cpu = statistics.median(u[1] for u in units)
    result = {"input": [size, size], "stride": stride, "classes": classes, "layer": layer,
              "upsample": upsample, "fwd_bwd_s": unit, "fwd_bwd_cpu_s": unit_cpu, "peaks": {}}
    for n in peak_counts:
        peaks = peaks_for(maps, n, seed=n)

        def batched():
            return PeakBackprop(model, image, upsample=upsample,
                                layer=layer).response_maps(peaks, chunk=n)

        def loop():
            return PeakBackprop(model, image, upsample=upsample, batched=False,
                                layer=layer).response_maps(peaks)

        batched()  # warm-up: vmap traces the batching rules on the first call
        tb, tl, cb, cl, diff = [], [], [], [], 0.0
        for _ in range(repeats):
            t, c, a = timed(batched)
            tb.append(t)
            cb.append(c)
            t, c, b = timed(loop)
            tl.append(t)
            cl.append(c)
            diff = max(diff, float((a - b).abs().max() / b.abs().max()))
        b_s, l_s = statistics.median(tb), statistics.median(tl)
        b_c, l_c = statistics.median(cb), statistics.median(cl)
        result["peaks"][n] = {"batched_s": b_s, "loop_s": l_s, "speedup": l_s / b_s,
                              "batched_cpu_s": b_c, "loop_cpu_s": l_c, "speedup_cpu": l_c / b_c,
                              "batched_in_fwd_bwd": b_s / unit, "loop_in_fwd_bwd": l_s / unit,
                              "batched_cpu_in_fwd_bwd": b_c / unit_cpu,
                              "max_rel_diff": diff, "batched_runs": tb, "loop_runs": tl}
        print(f"{name} at {at} {n} peaks: batched {b_s:.3f}s loop {l_s:.3f}s x{l_s / b_s:.2f}; "
              f"CPU {b_c:.3f}s / {l_c:.3f}s x{l_c / b_c:.2f}", file=sys.stderr, flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--peaks", nargs="+", type=int, default=[1, 5, 20])
    ap.add_argument("--upsample", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--glibc-default", action="store_true",
                    help="leave glibc's malloc settings as they are (extract-peaks keeps freed "
                         "memory for reuse: tag2mask.core.cpu_memory)")
    ap.add_argument("--at", nargs="+", default=["input"], choices=["input", "deep"],
                    help="where the maps are taken: the input image, the model's DEEP_LAYER")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = False if args.glibc_default else keep_freed_memory()
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "device": args.device, "repeats": args.repeats, "keep_freed_memory": kept,
           "models": {}}
    for name in args.models:
        for at in args.at:
            key = name if at == "input" else f"{name}@{DEEP_LAYER[name]}"
            out["models"][key] = bench_model(name, args.repeats, args.peaks, args.upsample,
                                             torch.device(args.device), at)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
