"""The built wheel works on its own: configs and device profiles ship inside it, console scripts are declared.

Builds the wheel from a copy of the sources, installs it (no dependencies: they come from this environment's
site-packages) into a temporary --target, and runs the entry points from a folder outside the repository with
PYTHONPATH naming only that target.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"quadranas-search": "nas.search:main", "quadranas-retrain": "nas.retrain:main",
           "quadranas-evaluate": "nas.evaluate:main", "quadranas-lut": "latency.lut:main",
           "quadranas-predict": "latency.predict:main", "quadranas-summary": "search_spaces.summary:main",
           "quadranas-results": "nas.results:main"}
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "nas", "search_spaces", "latency", "supernet", "experiments",
           "conf")


def _run(cmd, cwd, env, timeout=300):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "runs", "outputs", "multirun")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name, **(
            {"ignore": ignore} if (ROOT / name).is_dir() else {}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(src)], tmp, env)
    (wheel,) = (tmp / "dist").glob("quadranas-*.whl")
    target = tmp / "target"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], tmp, env)
    work = tmp / "work"  # outside the repository, with a user's own (unrelated) conf/ folder
    (work / "conf").mkdir(parents=True)
    env = {**env, "PYTHONPATH": str(target), "QUADRANAS_CACHE": str(tmp / "cache"), "HOME": str(tmp / "home"),
           "MPLCONFIGDIR": str(tmp / "mpl")}
    return {"wheel": wheel, "target": target, "work": work, "env": env, "tmp": tmp}


@pytest.mark.slow
def test_wheel_ships_configs_typing_license_and_scripts(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        names = set(z.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = z.read(entry_points).decode()
    for config in ("search", "retrain", "train", "evaluate"):
        assert f"conf/{config}.yaml" in names
    for group, option in (("device", "vpu"), ("device", "host"), ("dataset", "digits"), ("search_space", "quadra"),
                          ("loss", "constraint")):
        assert f"conf/{group}/{option}.yaml" in names
    assert {"nas/py.typed", "latency/py.typed", "search_spaces/py.typed", "supernet/py.typed"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "experiments/"))]  # they stay in the repository
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in scripts
        assert (installed["target"] / "bin" / script).is_file()


@pytest.mark.slow
def test_installed_wheel_runs_lut_and_search_outside_the_repo(installed):
    work, env, target, tmp = installed["work"], installed["env"], installed["target"], installed["tmp"]
    where = _run([sys.executable, "-c", "import conf, latency, nas; print(conf.__file__, latency.__file__, "
                  "nas.__file__)"], work, env).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), where

    lut = _run([sys.executable, "-m", "latency.lut", "device=vpu"], work, env)
    assert "space 'quadra' on vpu" in lut.stdout and "space latency range" in lut.stdout
    script = _run([str(target / "bin" / "quadranas-lut"), "device=vpu"], work, env)  # the console script
    assert "space latency range" in script.stdout

    run_dir = tmp / "search-run"
    _run([sys.executable, "-m", "nas.search", "dataset=digits", "train.warmup_epochs=0", "train.epochs=1",
          "threads=1", "log_devices=[vpu]", f"hydra.run.dir={run_dir}"],
         work, env, timeout=600)
    assert (run_dir / "arch.json").is_file()
