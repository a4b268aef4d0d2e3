"""What `pip install .` puts on a machine: one top-level import name, `imgprep`, and the console script."""

import os
import subprocess
import sys
import zipfile

import pytest

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


USER = 4242  # a uid with no account: no home, as `docker run -u 4242` or a cluster job gets


def _as_user(args, cwd="/", **env):
    """Run `args` as USER with a bare environment (no HOME). With CAP_DAC_READ_SEARCH only, through
    setpriv: the test's Python may live where other users cannot read (under /root here); the
    capability lets USER read it and nothing more: every write is checked as for any other user."""
    base = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    setpriv = ["setpriv", "--reuid", str(USER), "--regid", str(USER), "--clear-groups"]
    setpriv += ["--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search"]
    return subprocess.run(setpriv + args, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=300)


def test_a_user_with_no_home_runs_a_read_only_install(tmp_path, prepared128):
    """Installed root-owned and read-only, run by a uid with no home and a read-only
    NUMBA_CACHE_DIR: `load` (DALI's numba operator) and `train` work; numba's cache goes to a
    private per-user temporary folder, or, where that folder belongs to someone else, the operator
    is compiled in memory with one note line."""
    import shutil
    import tempfile

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("switching to another user needs root and setpriv (util-linux)")
    pytest.importorskip("numba")
    pytest.importorskip("nvidia.dali")
    top = tempfile.mkdtemp(prefix="imgprep-ro-")  # not under pytest's root-only tmp folder
    try:
        os.chmod(top, 0o755)
        site, data, runs = os.path.join(top, "site"), os.path.join(top, "data"), os.path.join(top, "runs")
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, ROOT],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        shutil.copytree(prepared128, data)
        for d, dirs, files in os.walk(top):
            for n in dirs + files:
                os.chmod(os.path.join(d, n), 0o555 if n in dirs else 0o444)  # read-only for everyone
        os.mkdir(runs)
        os.chown(runs, USER, USER)
        if _as_user([sys.executable, "-c", "import torch"], PYTHONPATH=site).returncode:
            pytest.skip(f"uid {USER} cannot read this Python environment ({sys.executable})")
        private = os.path.join(tempfile.gettempdir(), f"imgprep-numba-cache-{USER}")
        shutil.rmtree(private, ignore_errors=True)
        env = dict(PYTHONPATH=site, NUMBA_CACHE_DIR="/proc/imgprep-no-cache")
        load = [sys.executable, "-m", "imgprep.cli.main", "load", data, "--steps", "2", "--workers", "1", "--json"]
        load += ["--batch-size", "8"]
        train = [sys.executable, "-m", "imgprep.cli.main", "train", data, "--epochs", "1", "--width-mult", "0.125"]
        train += ["--batch-size", "8", "--init", "kaiming", "--workers", "1", "--no-progress"]
        for case in ("private cache", "cache folder taken"):
            if case == "cache folder taken":  # made by someone else (here root): never loaded from
                shutil.rmtree(private)
                os.mkdir(private, 0o777)
            r = _as_user(load, **env)
            assert r.returncode == 0, (case, r.stderr[-3000:])
            assert '"backend": "dali"' in r.stdout
            notes = r.stderr.strip().splitlines()
            want = (
                []
                if case == "private cache"
                else ["note: no writable folder for numba's cache; compiling the loader's CPU operator in memory"]
            )
            assert notes == want, (case, r.stderr[-3000:])
            r = _as_user(train + ["--run", os.path.join(runs, case.replace(" ", "-"))], **env)
            assert r.returncode == 0, (case, r.stderr[-3000:])
            if case == "private cache":
                assert os.stat(private).st_uid == USER and os.listdir(private)
    finally:
        for d, dirs, _ in os.walk(top):
            for n in dirs:
                os.chmod(os.path.join(d, n), 0o755)
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(os.path.join(tempfile.gettempdir(), f"imgprep-numba-cache-{USER}"), ignore_errors=True)
