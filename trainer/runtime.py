"""What every run of the model needs, shared by `train`, `eval`, `bench train` and `experiment`:
devices, building and initialising the model, mixed precision, and checkpoints."""

from __future__ import annotations

import contextlib
import json
import os

import torch

from imgprep.errors import ImgprepError
from imgprep.fileio import atomic_file, partial_path

from .config import INIT_NAMES, AlexNetConfig, EvalConfig
from .model import TwoTowerAlexNet, init_kaiming, init_paper

__all__ = [
    "CHECKPOINT",
    "INITS",
    "AUTO_NORMALIZE",
    "parse_devices",
    "build_model",
    "autocast",
    "save_checkpoint",
    "remove_leftovers",
    "load_checkpoint",
    "model_config_from",
    "evaluate_run",
    "check_eval_data",
    "check_input_size",
    "read_epochs",
    "compile_mode",
    "compile_model",
    "maybe_compile",
]

CHECKPOINT = "checkpoint.pt"
INITS = dict(zip(INIT_NAMES, (init_paper, init_kaiming), strict=True))
# With He init the first layer must see unit-scale inputs; the paper's init expects raw centred pixels.
AUTO_NORMALIZE = {"paper": "mean_image", "kaiming": "mean_image_std"}


def parse_devices(spec: str, local_rank: int = 0, shift: bool = False) -> tuple[torch.device, torch.device]:
    """(tower A device, tower B device) from auto, cpu, cuda:0 or cuda:0,cuda:1.

    With `shift` (several torchrun ranks on a machine) CUDA indices are offset by
    local_rank * (devices named): rank k of a node with "cuda:0,cuda:1" uses cuda:2k, cuda:2k+1.
    """
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        d = torch.device(f"cuda:{local_rank % n_gpu}") if n_gpu else torch.device("cpu")
        return d, d
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not 1 <= len(parts) <= 2:
        raise ImgprepError(f"--devices {spec!r}: give one device or two (tower A,tower B), e.g. cuda:0,cuda:1")
    devs = []
    for p in parts:
        try:
            d = torch.device(p)
        except RuntimeError:
            raise ImgprepError(f"--devices: {p!r} is not a device name (cpu, cuda:0, ...)") from None
        if d.type == "cuda":
            idx = (d.index or 0) + (local_rank * len(parts) if shift else 0)
            if idx >= n_gpu:
                raise ImgprepError(
                    f"--devices: {p} named (cuda:{idx} for this rank) but {n_gpu} CUDA GPU{'s' * (n_gpu != 1)} visible"
                )
            d = torch.device("cuda", idx)
        elif d.type != "cpu":
            raise ImgprepError(f"--devices: {p!r}: only cpu and cuda devices are supported")
        devs.append(d)
    return devs[0], devs[-1]


def build_model(mcfg: AlexNetConfig, init: str, devices, seed: int, channels_last: bool) -> TwoTowerAlexNet:
    """Model with the chosen initialisation, placed on (tower A, tower B) devices."""
    if init not in INITS:
        raise ImgprepError(f"--init {init!r}: one of {', '.join(INITS)}")
    torch.manual_seed(seed)
    model = TwoTowerAlexNet(mcfg)
    INITS[init](model)
    model.place(*devices)
    if channels_last and devices[0].type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on a CUDA device (when asked), else a no-op context."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_mode(devices, world: int) -> str:
    """torch.compile's mode for a placement: "reduce-overhead" (CUDA graphs: one launch per step
    instead of one per kernel) where one process drives one GPU, "default" elsewhere: CUDA graphs
    cannot span the two towers' GPUs, and DDP's bucketed all-reduce runs outside any graph.
    Shapes are static: the loader pads the last batch to the full size."""
    one_gpu = devices[0] == devices[1] and devices[0].type == "cuda"
    return "reduce-overhead" if one_gpu and world == 1 else "default"


def _grads(fn, net: torch.nn.Module, example: torch.Tensor, ctx_factory, rng) -> list[torch.Tensor | None]:
    """The parameters' gradients of one forward and backward of `fn` (train mode), from RNG state `rng`."""
    cpu_rng, cuda_rng = rng
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    net.zero_grad(set_to_none=True)
    with ctx_factory():
        out = fn(example)
    out.float().logsumexp(1).mean().backward()
    return [p.grad.detach().clone() if p.grad is not None else None for p in net.parameters()]


def _grad_mismatch(net: torch.nn.Module, compiled: list, eager: list, tol: float = 0.05) -> str | None:
    """The first parameter whose compiled gradient differs from the eager one by more than `tol`
    of its norm (bf16 rounding stays far below; a miscompiled graph is off by its whole size)."""
    for (name, _), c, e in zip(net.named_parameters(), compiled, eager, strict=True):
        if (c is None) != (e is None):
            return f"{name}: gradient missing on one side"
        if e is not None and (c - e).float().norm() > tol * e.float().norm() + 1e-12:
            return f"{name}: off by {float((c - e).float().norm() / e.float().norm().clamp(min=1e-12)):.0%}"
    return None


def compile_model(net: torch.nn.Module, example: torch.Tensor, ctx_factory, mode: str, log) -> torch.nn.Module | None:
    """`net` compiled by torch.compile and checked once on `example` (forward and backward in
    train mode, so both graphs are built now rather than in the first step): its gradients must
    equal eager ones. None with a one-line warning when compiling fails or the gradients differ,
    and the caller trains eagerly. Dropout draws from torch's generator as in eager mode
    (inductor's `fallback_random`), so the check compares like with like and a compiled run
    consumes the RNG as an eager one does. The check leaves no trace: RNG states are restored
    and the gradients cleared."""
    import torch._inductor.config as inductor_config

    rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    gen = torch.Generator(device=example.device).manual_seed(0)
    fmt = torch.channels_last if example.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    example = torch.randn(example.shape, generator=gen, device=example.device).to(example.dtype, memory_format=fmt)
    compiled = torch.compile(net, mode=mode, dynamic=False)
    try:
        net.train()
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with inductor_config.patch(fallback_random=True):
            got = _grads(compiled, net, example, ctx_factory, rng)
        problem = _grad_mismatch(net, got, _grads(net, net, example, ctx_factory, rng))
        if problem is not None:
            log(f"warning: torch.compile gave wrong gradients ({problem}); training eagerly")
            compiled = None
    except Exception as exc:  # a missing compiler, an unsupported op, a backend bug: train eagerly
        lines = str(exc).strip().splitlines()
        log(
            f"warning: torch.compile failed ({type(exc).__name__}: {lines[0][:160] if lines else ''}); training eagerly"
        )
        compiled = None
    finally:
        net.zero_grad(set_to_none=True)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
    return compiled


def maybe_compile(
    net: torch.nn.Module, example: torch.Tensor, devices, world: int, enabled: bool | None, ctx_factory, log
) -> tuple[torch.nn.Module, str | None]:
    """(what a step calls, torch.compile's mode) for `--compile` (None: on for CUDA, off on the
    CPU): `net` compiled in the placement's mode and checked by `compile_model`, or (net, None)
    when off or when compiling failed."""
    if not (enabled if enabled is not None else devices[0].type == "cuda"):
        return net, None
    mode = compile_mode(devices, world)
    compiled = compile_model(net, example, ctx_factory, mode, log)
    return (compiled, mode) if compiled is not None else (net, None)


def model_config_from(saved: dict) -> AlexNetConfig:
    """The AlexNetConfig stored in a checkpoint (`remove` back to a tuple)."""
    try:
        return AlexNetConfig(**{**saved, "remove": tuple(saved["remove"])})
    except (TypeError, KeyError) as exc:
        raise ImgprepError(f"checkpoint holds no usable model configuration ({exc})") from None


class _WriteErrors:
    """A file wrapper that remembers the OSError of a failed write: torch's zip writer turns it into
    a RuntimeError that no longer says what happened ("unexpected pos 704 vs 598")."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(run_dir: str, checkpoint: dict) -> None:
    """Write RUN_DIR/checkpoint.pt atomically: a crash leaves the previous one whole. A failed write
    (a full disk, permissions) is one ImgprepError."""
    path = os.path.join(run_dir, CHECKPOINT)
    try:
        with atomic_file(path) as f:
            w = _WriteErrors(f)
            try:
                torch.save(checkpoint, w)
            except RuntimeError:
                if w.error is None:
                    raise
                raise w.error from None
    except OSError as exc:
        kept = "; the previous checkpoint is intact: --resume continues from it" if os.path.exists(path) else ""
        raise ImgprepError(
            f"{path}: cannot write the checkpoint ({exc.strerror or exc}); free space or fix permissions there{kept}"
        ) from None


def remove_leftovers(run_dir: str) -> None:
    """Remove temporary files of our own (`.checkpoint.pt.partial`, ...) left by a run killed while
    writing them: the finished files beside them are whole."""
    for name in (CHECKPOINT, "config.json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial_path(os.path.join(run_dir, name)))


def load_checkpoint(run_dir: str) -> dict:
    """The checkpoint of a run, or ImgprepError. Loaded with `weights_only=True`: tensors and plain
    containers only, so a crafted file cannot run code."""
    p = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(p):
        raise ImgprepError(f"{run_dir}: no {CHECKPOINT}; train first (or check the RUN_DIR)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or damaged files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImgprepError(
            f"{p}: not a checkpoint this version can read safely ({msg[:200]}); nothing in it was run"
        ) from None
    keys = {"model", "optimizer", "scheduler", "epoch", "step", "config", "model_config", "rng"}
    missing = sorted(keys - set(ckpt)) if isinstance(ckpt, dict) else sorted(keys)
    if missing:
        raise ImgprepError(f"{p}: not an imgprep checkpoint (no {', '.join(missing)})")
    kinds = {"config": dict, "model_config": dict, "rng": dict, "model": dict, "epoch": int, "step": int}
    wrong = sorted(k for k, kind in kinds.items() if not isinstance(ckpt[k], kind))
    if wrong:
        raise ImgprepError(f"{p}: not an imgprep checkpoint ({', '.join(wrong)} of the wrong type)")
    return ckpt


def read_epochs(run_dir: str) -> list[dict]:
    """The epoch lines of RUN_DIR/metrics.jsonl in epoch order. A resumed run repeats epochs (the
    last line wins); a line cut by a crash, and the line the next run appended to it, are skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ImgprepError(f"{run_dir}: no metrics.jsonl; give a RUN_DIR of `imgprep train`")
    by_epoch = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("type") == "epoch":
                by_epoch[rec["epoch"]] = rec
    if not by_epoch:
        raise ImgprepError(f"{path}: no finished epoch yet; wait for the first epoch to end")
    return [by_epoch[k] for k in sorted(by_epoch)]


def check_eval_data(saved: dict, info, mcfg: AlexNetConfig, data: str, run_dir: str) -> None:
    """Refuse to evaluate a run on data unlike its training data: another stored size (other crops
    than it learned on), another class count, or other class names (a checkpoint of before they
    were recorded is checked for the count only)."""
    n_classes = len(info.classes)
    if n_classes != mcfg.num_classes:
        raise ImgprepError(f"{data}: {n_classes} classes, but the model of {run_dir} has {mcfg.num_classes}")
    size = saved.get("size")
    if isinstance(size, int) and size != info.size:
        raise ImgprepError(
            f"{data}: stored at {info.size} px, but {run_dir} was trained on data stored at {size} px; "
            f"evaluate on data prepared with --size {size}"
        )
    names = saved.get("class_names")
    if isinstance(names, list) and len(names) == n_classes:
        for i, (want, got) in enumerate(zip(names, (c["name"] for c in info.classes), strict=True)):
            if want != got:
                raise ImgprepError(
                    f"{data}: class {i} is {got!r}, but for the model of {run_dir} it is {want!r}; "
                    "evaluate on data prepared from the same classes"
                )


def check_input_size(model: torch.nn.Module, crop: int, data: str, device) -> None:
    """One line, not a traceback deep in a convolution, where the crops are too small for the model."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, crop, crop, device=device))
    except RuntimeError as exc:
        raise ImgprepError(
            f"{data}: its {crop}x{crop} crops are too small for AlexNet's layers "
            f"({str(exc).splitlines()[0][:80]}); prepare the data with a larger --size (the paper's is 256)"
        ) from None


def evaluate_run(cfg: EvalConfig) -> dict:
    """Top-1/top-5 error of a run's last checkpoint on the validation split of `data`."""
    from imgprep.dataset import open_dataset
    from imgprep.loaders import make_loader

    from .evaluate import evaluate

    run_dir, data = cfg.run_dir, cfg.data
    ckpt = load_checkpoint(run_dir)
    mcfg = model_config_from(ckpt["model_config"])
    devs = parse_devices(cfg.devices)
    model = TwoTowerAlexNet(mcfg)
    model.load_state_dict(ckpt["model"])
    model.place(*devs)
    dataset = open_dataset(data, cfg.retry())  # read once: the batch bound and the loader share it
    loader = make_loader(
        dataset,
        "val",
        dataset.batch_within("val", cfg.batch_size),
        "ten_crop" if cfg.ten_crop else "eval",
        device="gpu" if devs[0].type == "cuda" else "cpu",
        normalize=ckpt["config"]["normalize"],
        **cfg.loader_settings(),
    )
    check_eval_data(ckpt["config"], loader.info, mcfg, data, run_dir)
    check_input_size(model, loader.cfg.crop, data, devs[0])
    r = evaluate(model, loader, devs[0], autocast(devs[0]))
    r.update(ten_crop=cfg.ten_crop, epoch=ckpt["epoch"])
    return r
