"""What `pip install .` puts on a machine: one top-level import name, `imgprep`, and the console script."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_only_the_imgprep_package(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as z:
        names = z.namelist()
        dist = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = z.read(f"{dist}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"imgprep", dist}
    for module in ("imgprep/cli/main.py", "imgprep/trainer/train.py", "imgprep/trainer/model.py", "imgprep/dataset.py"):
        assert module in names
    assert "imgprep = imgprep.cli.main:main" in entry_points
    # installed into a bare folder and imported from elsewhere: cli and trainer are not top-level names
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(tmp_path / wheel)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    probe = (
        "import importlib.util as u, imgprep.trainer.config, imgprep.cli.options; "
        "print(u.find_spec('cli') is None, u.find_spec('trainer') is None, imgprep.__file__)"
    )
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    no_cli, no_trainer, where = r.stdout.split()
    assert no_cli == no_trainer == "True" and where.startswith(str(site))


def test_linux_only_wheels_are_not_required_on_macos_or_windows():
    """DALI (and numba, used only beside it) publish Linux wheels only: their markers keep `pip
    install` working on macOS and Windows, where `--backend auto` picks the torch fallback."""
    import tomllib
    from packaging.requirements import Requirement

    deps = [
        Requirement(d)
        for d in tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["dependencies"]
    ]
    envs = {
        "linux": {"sys_platform": "linux", "platform_machine": "x86_64"},
        "linux-arm": {"sys_platform": "linux", "platform_machine": "aarch64"},
        "macos": {"sys_platform": "darwin", "platform_machine": "arm64"},
        "windows": {"sys_platform": "win32", "platform_machine": "AMD64"},
    }
    for name in ("nvidia-dali-cuda120", "numba"):
        req = next(d for d in deps if d.name == name)
        wanted = {env: req.marker is None or req.marker.evaluate(v) for env, v in envs.items()}
        assert wanted == {"linux": True, "linux-arm": True, "macos": False, "windows": False}, name
    assert all(d.marker is None for d in deps if d.name not in ("nvidia-dali-cuda120", "numba"))
