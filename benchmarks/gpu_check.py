"""One short script for a GPU machine: the GPU paths and their throughput, in one run.

  1. the GPU loader (DALI "mixed" decode, uint8 hand-over, one fused normalize op): images/s with
     the full augmentation and with crop + flip + normalize alone, at batch 128 and 256; the former
     operator chain on the GPU beside it; the hardware decoder's share (hw_decoder_load) 0 / 0.65 /
     0.9; on the same machine's CPU cores the DALI CPU pipeline (fused operator and operator chain),
     the torch fallback and the torchvision-style baseline
  2. the GPU pipeline's eval views against the CPU pipeline's (same samples, same windows)
  3. the model alone (synthetic input) and training fed by the loader: both towers on cuda:0,
     bf16, channels_last, compiled with CUDA graphs, at batch 128 and 512; eager at 128 beside it;
     the model-parallel placement cuda:0,cuda:1 with two GPUs
  4. one epoch of `imgprep train` end to end (compiled, with validation)
  5. the issue's goals, as ratios of the figures above

Usage: python benchmarks/gpu_check.py [--images 6000] [--out gpu_check.json]
It synthesizes and prepares its own data (no download), and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import torch

    from imgprep.bench import baseline_loader, loader_rate
    from imgprep.loaders import make_loader
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.synth import SynthConfig, synthesize
    from imgprep.trainer.bench import TrainBenchConfig, bench_train
    from imgprep.trainer.train import TrainConfig, train

    assert torch.cuda.is_available(), "no CUDA GPU visible"
    work = tempfile.mkdtemp(prefix="gpu-check-")
    data = a.data
    if data is None:
        t = time.perf_counter()
        synthesize(
            SynthConfig(os.path.join(work, "src"), classes=10, per_class=a.images // 10, val_per_class=10),
            workers=os.cpu_count(),
        )
        data = os.path.join(work, "data")
        s = prepare(PrepareConfig(os.path.join(work, "src"), data, shard_size=250), progress=False, log=lambda x: None)
        print(
            f"prepared {s['images']} images at {s['images_per_second']} img/s in {time.perf_counter() - t:.0f} s",
            file=sys.stderr,
        )
    report = {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_cores": os.cpu_count(),
    }

    def rate(name, lo, steps=20):
        t = time.perf_counter()
        r = round(loader_rate(lo, steps), 1)
        report[name] = r
        print(f"{name}: {r} img/s ({time.perf_counter() - t:.0f} s)", file=sys.stderr)

    for b in (128, 256):
        lo = make_loader(data, "train", b, device="gpu")
        x, y = next(iter(lo))
        assert x.is_cuda and x.shape == (b, 3, 224, 224) and x.dtype == torch.float32
        rate(f"dali_mixed_train_b{b}_images_per_second", lo)
    rate(
        "dali_mixed_basic_b128_images_per_second",
        make_loader(data, "train", 128, device="gpu", lighting_std=0.0, normalize="channel"),
    )
    # the former GPU path: crop_mirror_normalize twice and a subtraction, in DALI
    lo = make_loader(data, "train", 128, device="gpu", handover="off")
    rate("dali_mixed_operator_chain_train_b128_images_per_second", lo)
    for load in (0.0, 0.65, 0.9):
        rate(f"dali_mixed_train_b128_hw_decoder_load_{load}", make_loader(data, "train", 128, hw_decoder_load=load))
    rate(
        "dali_mixed_train_b128_bf16_channels_last",
        make_loader(data, "train", 128, dtype="bfloat16", channels_last=True),
    )
    lo = make_loader(data, "train", 128, device="cpu")
    rate("dali_cpu_fused_train_b128_images_per_second", lo)
    lo = make_loader(data, "train", 128, device="cpu", cpu_operator="chain")
    rate("dali_cpu_operator_chain_train_b128_images_per_second", lo)
    rate("torch_fallback_train_b128_images_per_second", make_loader(data, "train", 128, backend="torch", device="cpu"))
    rate("baseline_torchvision_style_b128_images_per_second", baseline_loader(data, 128, os.cpu_count()))
    # the GPU pipeline's eval views equal the CPU pipeline's up to the two JPEG decoders' rounding
    xs = {}
    for dev in ("gpu", "cpu"):
        lo = make_loader(data, "val", 50, "eval", device=dev)
        xs[dev] = [(x.float().cpu(), y.cpu()) for x, y in lo]
    d = torch.cat([(a - b).abs().flatten() for (a, _), (b, _) in zip(xs["gpu"], xs["cpu"], strict=True)])
    report["gpu_vs_cpu_eval_views"] = {
        "labels_equal": all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(xs["gpu"], xs["cpu"], strict=True)),
        "mean_abs_diff": round(float(d.mean()), 4),
        "max_abs_diff": round(float(d.max()), 3),
        "p999_abs_diff": round(float(d.kthvalue(int(0.999 * len(d))).values), 3),
    }
    print(f"gpu vs cpu eval views: {report['gpu_vs_cpu_eval_views']}", file=sys.stderr)
    placements = ("cuda:0",) + (("cuda:0,cuda:1",) if torch.cuda.device_count() > 1 else ())
    report["train"] = []
    for batch, compiled in ((128, True), (512, True), (128, False)):
        t = time.perf_counter()
        r = bench_train(
            TrainBenchConfig(data, batch_size=batch, steps=20, repeats=2, placements=placements, compile=compiled),
            log=lambda s: print(s, file=sys.stderr),
        )
        report["train"] += [{"batch_size": batch, **row} for row in r["results"]]
        print(f"bench train b{batch} compile={compiled}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    t = time.perf_counter()
    last = train(
        TrainConfig(data, os.path.join(work, "run"), epochs=1, init="kaiming"),
        progress=False,
        log=lambda s: print(s, file=sys.stderr),
    )
    report["train_one_epoch"] = {
        **{k: last.get(k) for k in ("train_loss", "images_per_second", "seconds", "val_top1_error")},
        "wall_seconds_with_setup_and_compile": round(time.perf_counter() - t, 1),
    }
    row = {(x["batch_size"], x["compiled"] is not None, x["placement"]): x for x in report["train"]}
    b128, b512 = row.get((128, True, "cuda:0")), row.get((512, True, "cuda:0"))
    report["goals"] = {
        "model_alone_b128 (goal >= 25k)": b128 and b128["model_synthetic"],
        "model_alone_b512 (goal >= 40k)": b512 and b512["model_synthetic"],
        "training_fed_b128 (goal >= 32k)": b128 and b128["training_with_loader"],
        "fed / model alone b128 (goal >= 0.90)": b128
        and round(b128["training_with_loader"] / b128["model_synthetic"], 3),
        "loader full / basic b128 (goal >= 0.95)": round(
            report["dali_mixed_train_b128_images_per_second"] / report["dali_mixed_basic_b128_images_per_second"], 3
        ),
    }
    print(json.dumps(report, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
