"""Settings are checked against their declarations (`imgprep.config.setting`), for the Python API as
for the CLI: every bounded field rejects a value just outside its bound, every float rejects NaN and
infinities, every choice field rejects an unknown value."""

import dataclasses
import math
import typing

import pytest

from imgprep.bench import LoadBenchConfig, PrepareBenchConfig
from imgprep.errors import ImgprepError
from imgprep.loader_base import LoaderConfig
from imgprep.prepare import PrepareConfig
from imgprep.synth import SynthConfig
from imgprep.trainer.config import DemoConfig, EvalConfig, ExperimentConfig, TrainBenchConfig, TrainConfig
from imgprep.upload import UploadConfig

CONFIGS = [
    PrepareBenchConfig,
    LoadBenchConfig,
    LoaderConfig,
    PrepareConfig,
    SynthConfig,
    TrainConfig,
    EvalConfig,
    ExperimentConfig,
    TrainBenchConfig,
    DemoConfig,
    UploadConfig,
]


def _required(cls) -> dict:
    """Placeholder values for the fields without a default (paths)."""
    return {
        f.name: "x"
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }


def _outside(meta: dict, kind: type) -> list:
    """Values just outside the declared range of a field."""
    step = 1 if kind is int else 1e-9
    out = []
    if meta.get("min") is not None:
        out.append(meta["min"] if meta.get("min_open") else meta["min"] - step)
    if meta.get("max") is not None:
        out.append(meta["max"] if meta.get("max_open") else meta["max"] + step)
    return [kind(v) if kind is int else v for v in out]


def _kind(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if typing.get_origin(base) is tuple:
        return tuple, typing.get_args(base)[0]
    return base, None


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_bounded_field_rejects_a_value_just_outside_its_bound(cls):
    hints = typing.get_type_hints(cls)
    required = _required(cls)
    cls(**required)  # the defaults pass
    checked = 0
    for f in dataclasses.fields(cls):
        kind, item = _kind(hints[f.name])
        number = item if kind is tuple else kind
        if number not in (int, float):
            continue
        bad = _outside(f.metadata, number)
        if number is float:
            bad += [math.nan, math.inf, -math.inf]
        for v in bad:
            value = (v,) if kind is tuple else v
            with pytest.raises(ImgprepError, match="--" + f.name.replace("_", "-")):
                cls(**{**required, f.name: value})
            checked += 1
        if f.metadata.get("choices") and kind is str:
            with pytest.raises(ImgprepError, match="one of"):
                cls(**{**required, f.name: "no-such-choice"})
    assert checked > 0 or cls in (EvalConfig,)


def test_seeds_and_nan_learning_rates_are_one_line_errors():
    with pytest.raises(ImgprepError, match="--seed -5: must be at least 0"):
        PrepareConfig("s", "o", seed=-5)
    for name in ("lr", "momentum", "weight_decay", "width_mult"):
        for v in (math.nan, math.inf):
            with pytest.raises(ImgprepError, match=f"--{name.replace('_', '-')} {v!r}: must be a finite number"):
                TrainConfig("d", "r", **{name: v})


def test_every_loader_setting_is_an_option_of_every_command_that_loads():
    """LoaderSettings is declared once; `load`, `train`, `eval`, `experiment` and `bench train` all
    have each of its settings as an option, with the same help and default."""
    from imgprep.cli.main import main
    from imgprep.loader_base import LoaderSettings

    commands = {
        "load": main.get_command(None, "load"),
        "train": main.get_command(None, "train"),
        "eval": main.get_command(None, "eval"),
        "experiment": main.get_command(None, "experiment"),
        "bench train": main.get_command(None, "bench").commands["train"],
    }
    for f in dataclasses.fields(LoaderSettings):
        for name, cmd in commands.items():
            (opt,) = [p for p in cmd.params if p.name == f.name]
            assert opt.opts == ["--" + f.name.replace("_", "-")], name
            assert opt.help == f.metadata["help"] and opt.default == f.default, (name, f.name)


def test_loader_settings_reach_the_loaders_of_train_and_eval(prepared128, tmp_path):
    from imgprep.trainer.config import EvalConfig
    from imgprep.trainer.train import setup

    kw = dict(width_mult=0.125, init="kaiming", batch_size=8, workers=1, prefetch=3, hw_decoder_load=0.5)
    run = setup(TrainConfig(prepared128, str(tmp_path / "r"), on_corrupt="skip", **kw))
    try:
        for lo in (run.train_loader, run.val_loader):
            assert (lo.cfg.prefetch, lo.cfg.hw_decoder_load, lo.cfg.on_corrupt, lo.cfg.workers) == (3, 0.5, "skip", 1)
    finally:
        run.metrics.close()
        run.lock.release()
    assert EvalConfig("r", "d", on_corrupt="skip").loader_settings()["on_corrupt"] == "skip"


def test_a_run_saved_before_the_loader_settings_were_shared_resumes(prepared128, tmp_path):
    """A checkpoint whose config has no prefetch / hw_decoder_load (runs saved before they were
    train options) resumes: a setting a run predates counts as its default."""
    import torch

    from imgprep.trainer.runtime import CHECKPOINT
    from imgprep.trainer.train import train

    kw = dict(width_mult=0.125, init="kaiming", batch_size=8, workers=1, log_every=1)
    run_dir = tmp_path / "old"
    train(TrainConfig(prepared128, str(run_dir), epochs=1, **kw), progress=False, log=lambda s: None)
    ck = torch.load(run_dir / CHECKPOINT, weights_only=True)
    for k in ("prefetch", "hw_decoder_load", "checkpoint_every", "size", "class_names"):
        ck["config"].pop(k)
    torch.save(ck, run_dir / CHECKPOINT)
    last = train(
        TrainConfig(prepared128, str(run_dir), epochs=2, **kw), resume=True, progress=False, log=lambda s: None
    )
    assert last["epoch"] == 2


def test_every_model_setting_is_an_option_of_train_and_bench_train():
    from imgprep.cli.main import main
    from imgprep.trainer.config import ModelSettings

    for cmd in (main.get_command(None, "train"), main.get_command(None, "bench").commands["train"]):
        for f in dataclasses.fields(ModelSettings):
            (opt,) = [p for p in cmd.params if p.name == f.name]
            assert opt.help == f.metadata["help"], (cmd.name, f.name)
    from imgprep.trainer.config import AlexNetConfig

    got = TrainConfig("d", "r", width_mult=0.5, dropout=0.25, activation="tanh", remove=("conv3",)).model_config(7)
    assert got == AlexNetConfig(7, 0.5, 0.25, "tanh", ("conv3",))


def test_the_model_architecture_takes_its_defaults_and_bounds_from_model_settings():
    """AlexNetConfig (what checkpoints hold) declares no default or bound of its own: both come from
    ModelSettings, so the CLI, the Python API and a checkpoint's architecture cannot drift."""
    from imgprep.trainer.config import AlexNetConfig, ModelSettings

    m, a = ModelSettings(), AlexNetConfig(10)
    assert (a.width_mult, a.dropout, a.activation, a.remove) == (m.width_mult, m.dropout, m.activation, m.remove)
    for bad in ({"dropout": 1.0}, {"width_mult": 0.0}, {"activation": "gelu"}, {"remove": ("conv9",)}):
        with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-")):
            AlexNetConfig(10, **bad).validate()
    with pytest.raises(ValueError, match="num_classes"):
        AlexNetConfig(0).validate()


def test_the_cache_and_request_settings_are_declared_once_for_bench_load_and_upload_too():
    from imgprep.cli.main import main
    from imgprep.loader_base import CacheSettings, LoaderSettings, RemoteSettings

    assert issubclass(LoaderSettings, CacheSettings) and issubclass(CacheSettings, RemoteSettings)
    for cls, cmd in (
        (CacheSettings, main.get_command(None, "bench").commands["load"]),
        (RemoteSettings, main.get_command(None, "upload")),
    ):
        for f in dataclasses.fields(cls):
            (opt,) = [p for p in cmd.params if p.name == f.name]
            assert opt.help == f.metadata["help"] and opt.default == f.default, (cmd.name, f.name)
