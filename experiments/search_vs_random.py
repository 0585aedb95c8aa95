"""Does the search beat random architectures at equal latency? ``python -m experiments.search_vs_random``.

For each (device, target) of the grid:

1. search ``--seeds`` times with the named search variant (``nas.search`` + the variant's overrides);
2. draw ``--k`` random architectures with table latency in ``[0.9 T, T]`` on the same table
   (:func:`search_spaces.sampling.sample_in_band`: a skip probability per architecture, then ops);
3. retrain every architecture with one recipe (``nas.retrain`` + ``--recipe``), the searched ones
   with retrain seed = search seed, the random ones with seed 0;
4. print target, exported ms, searched top-1 mean +- std, random mean +- std, best random and
   the rank of the searched mean among the random draws; write ``search_vs_random.csv``
   (one row per retrained architecture), ``search_vs_random_summary.{csv,md}`` and
   ``search_vs_random.png`` (top-1 against latency per device) into ``--out``.

Every search and every retrain is a subprocess with its own run folder under ``--root``,
skipped when its ``arch.json`` / ``results.json`` exists and resumed from its checkpoint when
interrupted: rerun the same command to go on. Retrain folders are keyed by (recipe, dataset,
architecture, seed) only, so random draws and their retrains are shared by every search
variant. ``--jobs 2`` runs two 1-thread processes side by side.

Flags: ``--grid vpu:30ms,cpu:30ms,gpu:1ms`` ``--k 5`` ``--seeds 0,1`` ``--variant NAME``
``--search "OVERRIDES"`` (e.g. "derive.method=argmax loss=mul_log") ``--supernet-from VARIANT``
(derive that variant's trained supernets again, e.g. with other ``derive.*``) ``--recipe "OVERRIDES"``
(default "train.epochs=2 dataset.limit=30000") ``--dataset fashion_mnist`` ``--jobs 2``
``--root experiments/runs`` ``--out experiments/results`` ``--report-only`` (tables from what
has finished, nothing run) ``--no-search`` / ``--no-random`` (only one side; the other side's rows
are kept from ``--out``'s CSV).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from experiments.plots import device_panels
from latency.lut import LatencyTable, get_table
from latency.standin import ROOFLINE_DEVICES
from latency.units import parse_latency_ms
from search_spaces.arch import Arch
from search_spaces.io import atomic_write_text
from search_spaces.sampling import sample_in_band
from search_spaces.spaces import SearchSpace, space_from_config

ROOT = Path(__file__).resolve().parents[1]
BAND_LO = 0.9  # random draws in [0.9 T, T]
# 2 epochs on 30k images (468 steps): what a 2-core machine affords for ~30 retrains in one session
# (3 epochs on all 60k took 20 min per retrain there under load); pass --recipe for more.
DEFAULT_RECIPE = "train.epochs=2 dataset.limit=30000"
BENCH_EVAL = ["eval.onnx=false", "eval.host_latency=false", "eval.every_epoch=false", "results_csv=null",
              "threads=1"]
LEGACY_STEM_STRIDE = 2  # the training stem stride of every retrain folder made before the stride was a choice
INPUT = {"fashion_mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10)}


@dataclass(frozen=True)
class Point:
    device: str
    target: str  # as the user wrote it, e.g. "30ms"

    @property
    def target_ms(self) -> float:
        return parse_latency_ms(self.target)

    @property
    def tag(self) -> str:
        return f"{self.device}-{self.target}"


def parse_grid(text: str) -> list[Point]:
    points = []
    for item in text.split(","):
        device, sep, target = item.strip().partition(":")
        if not sep:
            raise ValueError(f"grid entry {item!r}: expected DEVICE:TARGET, e.g. vpu:30ms")
        parse_latency_ms(target)  # a clear error for a bad unit
        points.append(Point(device, target))
    return points


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (empty items ignored)."""
    return [int(s) for s in text.split(",") if s != ""]


def add_folder_args(p: argparse.ArgumentParser) -> None:
    """The options of every benchmark that reads or writes the shared run folders: dataset, run folders
    (``--root``) and output folder (``--out``)."""
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(INPUT))
    p.add_argument("--root", type=Path, default=ROOT / "experiments" / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")


def add_run_args(p: argparse.ArgumentParser, report_only_help: str) -> None:
    """The options every benchmark that retrains through :func:`retrain_run` shares: recipe, side-by-side
    jobs and ``--report-only``, and :func:`add_folder_args`."""
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="nas.retrain overrides shared by all retrains")
    add_folder_args(p)
    p.add_argument("--jobs", type=int, default=2, help="processes side by side (1 thread each)")
    p.add_argument("--report-only", action="store_true", help=report_only_help)


def _key(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def space_cfg(name: str = "quadra") -> dict:
    """The search space's config as the search composes it (the packaged ``conf``)."""
    text = (resources.files("conf") / "search_space" / f"{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text))


def _run(cmd: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(cmd[:4])} ... failed with exit {r.returncode}; see {log_path}")


@contextlib.contextmanager
def _locked(run_dir: Path):
    """One process at a time per run folder (two benchmark commands may share random retrains) or per
    output folder (:func:`report`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".bench.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# -- the three kinds of work ---------------------------------------------------------------
@dataclass(frozen=True)
class BandDraws:
    space: SearchSpace  # at the deployment shape, priced by ``table``
    table: LatencyTable
    train_space: SearchSpace  # the same space at the dataset's shape, with the training stem stride
    picks: list[tuple[str, ...]]  # choices per layer


def space_cfg_at(train_stem_stride: int | None = None) -> dict:
    """:func:`space_cfg` with the training stem stride set (None: the packaged one)."""
    scfg = space_cfg()
    if train_stem_stride is not None:
        scfg["train_stem_stride"] = train_stem_stride
    return scfg


def band_setting(point: Point, dataset: str, train_stem_stride: int | None = None) -> BandDraws:
    """The space, ``point``'s device table and the training-shape space (stem stride ``train_stem_stride``,
    None: the packaged config's), with no architecture drawn."""
    scfg = space_cfg_at(train_stem_stride)
    space = space_from_config(scfg)
    shape, classes = INPUT[dataset]
    return BandDraws(space, get_table(space, point.device, progress=False),
                     space.with_input(shape, classes, scfg["train_stem_stride"]), [])


def draw_band(point: Point, n: int, seed: int, dataset: str, train_stem_stride: int | None = None) -> BandDraws:
    """``n`` distinct architectures in the band ``[BAND_LO * T, T]`` of ``point`` on its device's table
    (:func:`search_spaces.sampling.sample_in_band`); deterministic in (space, device, band, seed). The
    draw does not depend on ``train_stem_stride``: only the training shape of the returned space does."""
    band, t = band_setting(point, dataset, train_stem_stride), point.target_ms
    table = band.table
    picks = sample_in_band(band.space.all_candidates(), table.layer_ms(), table.fixed_ms, BAND_LO * t, t, n, seed=seed)
    return replace(band, picks=picks)


def random_archs(point: Point, k: int, dataset: str, out_dir: Path, train_stem_stride: int | None = None) -> list[Path]:
    """K architecture files drawn in the band; deterministic in (space, device, band, dataset). The files
    are at the dataset's shape with stem stride ``train_stem_stride`` (None: the packaged config's)."""
    band = draw_band(point, k, 0, dataset, train_stem_stride)
    scfg, t = space_cfg_at(train_stem_stride), point.target_ms
    space, table, train_space = band.space, band.table, band.train_space
    paths = []
    for i, choices in enumerate(band.picks):
        path = out_dir / f"draw{i}.json"
        ms = table.arch_ms(space.arch(choices))
        meta = {"random_draw": {"device": point.device, "band_ms": [BAND_LO * t, t], "index": i, "ms": ms,
                                "predictor": table.predictor,
                                "distribution": "skip prob s~U(0,1) per arch, then ops; kept in band"},
                "config": {"search_space": scfg}}
        if not path.exists():
            train_space.arch(choices, meta).save(path)
        paths.append(path)
    return paths


def claim_variant(variant_dir: Path, overrides: list[str]) -> None:
    """Record a variant's search overrides in its folder; a name already used with other overrides is an error."""
    spec = variant_dir / "variant.json"
    if spec.exists() and json.loads(spec.read_text())["overrides"] != overrides:
        raise SystemExit(f"error: variant {variant_dir.name!r} was run with overrides "
                         f"{json.loads(spec.read_text())['overrides']}; pick another --variant name")
    atomic_write_text(spec, json.dumps({"overrides": overrides}) + "\n")


def search_run(point: Point, seed: int, variant_dir: Path, overrides: list[str], dataset: str,
               run: bool = True, supernet_from: Path | None = None) -> Path | None:
    """The search's arch.json (searching first unless it exists); None if absent and ``run`` is false.

    ``supernet_from``: another variant's folder whose finished supernet is derived again here
    (its checkpoint is linked in; ``nas.search`` refuses unless only ``derive.*`` differs).
    """
    run_dir = variant_dir / point.tag / f"seed{seed}"
    if not (run_dir / "arch.json").exists():
        if not run:
            return None
        with _locked(run_dir):
            if not (run_dir / "arch.json").exists():
                if supernet_from is not None and not (run_dir / "checkpoint.pt").exists():
                    base = supernet_from / point.tag / f"seed{seed}"
                    if not (base / "arch.json").exists():
                        raise FileNotFoundError(f"{base} holds no finished search to derive again")
                    os.link(base / "checkpoint.pt", run_dir / "checkpoint.pt")
                _search(point, seed, run_dir, overrides, dataset)
    return run_dir / "arch.json"


def _search(point: Point, seed: int, run_dir: Path, overrides: list[str], dataset: str) -> None:
    _run([sys.executable, "-m", "nas.search", f"device={point.device}", f"latency={point.target}",
              f"seed={seed}", f"dataset={dataset}", "threads=1", "results_csv=null", *overrides,
              f"hydra.run.dir={run_dir}"], run_dir / "bench.log")


def recipe_dir(root: Path, dataset: str, recipe: list[str]) -> Path:
    """The folder holding every retrain of one (dataset, recipe), one subfolder per (architecture, seed)."""
    return root / "retrain" / _key(dataset, *sorted(recipe))


def retrain_run(arch_path: Path, seed: int, recipe: list[str], dataset: str, root: Path,
                run: bool = True) -> dict | None:
    """results.json of the retrain (training first unless it exists); None if absent and ``run`` is false."""
    arch = Arch.load(arch_path)
    space = arch.metadata.get("config", {}).get("search_space", {}).get("name", "quadra")
    # quadra folders predate other spaces and are keyed by the choices alone; other spaces add their name,
    # other training stem strides theirs
    arch_key = _key(*arch.choices) if space == "quadra" else _key(space, *arch.choices)
    if arch.macro.stem_stride != LEGACY_STEM_STRIDE:  # folders at the first training stride keep their names
        arch_key += f"-stem{arch.macro.stem_stride}"
    run_dir = recipe_dir(root, dataset, recipe) / f"{arch_key}-s{seed}"
    results = run_dir / "results.json"
    if not results.exists():
        if not run:
            return None
        with _locked(run_dir):
            if not results.exists():
                _run([sys.executable, "-m", "nas.retrain", f"arch={arch_path}", f"seed={seed}", f"dataset={dataset}",
                      *BENCH_EVAL, *recipe, f"hydra.run.dir={run_dir}"], run_dir / "bench.log")
    return json.loads(results.read_text())


def retrain_all(runs: list[tuple[Path, int]], recipe: list[str], a: argparse.Namespace) -> list[dict | None]:
    """:func:`retrain_run` of each ``(arch_path, seed)``, ``a.jobs`` at a time (``a.report_only``: run nothing)."""
    with ThreadPoolExecutor(a.jobs) as pool:
        return list(pool.map(lambda r: retrain_run(r[0], r[1], recipe, a.dataset, a.root, not a.report_only), runs))


# -- tables ---------------------------------------------------------------------------------
def full_choices(short: str) -> list[str]:
    """A table's ``choices`` cell (quadra ops without their ``quadra_`` prefix, as :func:`_row` writes them) as
    the space's op names."""
    return [c if c == "identity" else f"quadra_{c}" for c in short.split()]


def training_arch_file(space: str, choices: list[str], dataset: str, metadata: dict, path: Path) -> Path:
    """``path``: an arch.json of ``choices`` in the packaged ``space`` at ``dataset``'s shape with the space's
    training stem stride (the shape the benchmarks retrain), written only when it is missing or differs."""
    shape, classes = INPUT[dataset]
    cfg = space_cfg(space)
    arch = space_from_config(cfg).with_input(shape, classes, cfg.get("train_stem_stride")).arch(
        choices, {"config": {"search_space": cfg}, **metadata})
    if not path.exists() or Arch.load(path) != arch:
        arch.save(path)
    return path


def _row(kind: str, variant: str, point: Point, seed: int, res: dict, arch: Arch) -> dict:
    lat = {f"{n}_ms": v["ms"] for n, v in res["latency_ms"].items()}
    return {"kind": kind, "variant": variant if kind == "searched" else "", "device": point.device,
            "target_ms": point.target_ms, "seed": seed, "latency_ms": res["latency_ms"][point.device]["ms"],
            "predictor": res["latency_ms"][point.device]["predictor"], "top1": res["top1"],
            "params": res["params"], "deploy_macs": res["deployment"]["macs"],
            "derivation": arch.metadata.get("derivation", "random draw"),
            "choices": " ".join(c.replace("quadra_", "") for c in arch.choices), **lat, "run_dir": res["run_dir"]}


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (device, target, variant): the searched exports against the random draws.

    ``delta_se_pt`` is the standard error of ``delta_vs_random_pt`` if the search were one more random
    pick in the band: the draws' std times sqrt(1/S + 1/K) for S searched and K random retrains. A delta
    within about two of it is what random picks give by chance."""
    out = []
    for (device, target), g in rows.groupby(["device", "target_ms"], sort=False):
        rnd = g[g.kind == "random"].top1
        for variant, s in g[g.kind == "searched"].groupby("variant"):
            mean = s.top1.mean()
            out.append({"device": device, "target_ms": target, "variant": variant,
                        "exported_ms": s.latency_ms.mean(), "used": s.latency_ms.mean() / target,
                        "searched_top1": mean, "searched_std": s.top1.std(ddof=1) if len(s) > 1 else np.nan,
                        "n_seeds": len(s), "random_top1": rnd.mean(),
                        "random_std": rnd.std(ddof=1) if len(rnd) > 1 else np.nan, "random_median": rnd.median(),
                        "best_random": rnd.max(), "n_random": len(rnd), "delta_vs_random_pt": 100 * (mean - rnd.mean()),
                        "delta_se_pt": (100 * rnd.std(ddof=1) * np.sqrt(1 / len(s) + 1 / len(rnd))
                                        if len(rnd) > 1 else np.nan),
                        "rank": int((rnd > mean).sum()) + 1})
        if g[g.kind == "searched"].empty and len(rnd):
            out.append({"device": device, "target_ms": target, "variant": "(none yet)", "random_top1": rnd.mean(),
                        "random_std": rnd.std(ddof=1) if len(rnd) > 1 else np.nan, "random_median": rnd.median(),
                        "best_random": rnd.max(),
                        "n_random": len(rnd)})
    return pd.DataFrame(out)


def markdown(summary: pd.DataFrame, recipe: list[str], note: str) -> str:
    lines = [f"# Searched vs random architectures at equal latency\n\nRetrain recipe: `{' '.join(recipe)}` "
             f"(+ {' '.join(BENCH_EVAL)}). Random: K draws with table latency in [0.9T, T]. {note}\n",
             "| device | target ms | variant | exported ms | searched top-1 (mean +- std, n) | random top-1 "
             "(mean +- std, n) | random median | best random | delta pt (SE) | rank |", "|" + "---|" * 10]
    for r in summary.to_dict("records"):
        def f(v, fmt="{:.4f}"):
            return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)
        lines.append(f"| {r['device']} | {r['target_ms']:g} | {r['variant']} | {f(r.get('exported_ms'), '{:.2f}')} | "
                     f"{f(r.get('searched_top1'))} +- {f(r.get('searched_std'))} ({f(r.get('n_seeds'), '{:.0f}')}) | "
                     f"{f(r['random_top1'])} +- {f(r['random_std'])} ({r['n_random']:.0f}) | {f(r['random_median'])} | "
                     f"{f(r['best_random'])} | "
                     f"{f(r.get('delta_vs_random_pt'), '{:+.2f}')} ({f(r.get('delta_se_pt'), '{:.2f}')}) | "
                     f"{f(r.get('rank'), '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, path: Path) -> None:
    with device_panels(list(dict.fromkeys(rows.device)), path) as panels:
        for ax, device in panels:
            g = rows[rows.device == device]
            r = g[g.kind == "random"]
            ax.scatter(r.latency_ms, r.top1, c="0.6", marker="o", label="random in [0.9T, T]")
            for variant, s in g[g.kind == "searched"].groupby("variant"):
                ax.scatter(s.latency_ms, s.top1, marker="*", s=120, label=f"searched: {variant}")
            for t in sorted(set(g.target_ms)):
                ax.axvline(t, color="k", lw=0.6, ls=":")
            ax.set_title(f"{device} ({g.predictor.iloc[0]})", fontsize=8)
            ax.set_xlabel(f"table latency on {device} (ms)")
            ax.set_ylabel("retrained test top-1")
            ax.legend(fontsize=7)


# -- driver ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="vpu:30ms,cpu:30ms,gpu:1ms")
    p.add_argument("--k", type=int, default=5, help="random draws per point")
    p.add_argument("--seeds", default="0,1", help="search seeds (each export retrained with that seed)")
    p.add_argument("--variant", default="default", help="name of the search variant (folder name)")
    p.add_argument("--search", default="", help="nas.search overrides of this variant")
    add_run_args(p, "tables from finished runs; run nothing")
    p.add_argument("--supernet-from", default=None, metavar="VARIANT",
                   help="derive this variant from VARIANT's finished supernets (--search may change only derive.*)")
    p.add_argument("--no-search", action="store_true", help="only the random draws and their retrains")
    p.add_argument("--no-random", action="store_true",
                   help="only the searches and their retrains; the random rows come from --out's CSV (their "
                        "1-thread retrains are deterministic, so with the same --recipe they would repeat)")
    a = p.parse_args(argv)
    points = parse_grid(a.grid)
    seeds = parse_seeds(a.seeds)
    recipe, overrides = shlex.split(a.recipe), shlex.split(a.search)
    variant_dir = a.root / "search" / a.dataset / a.variant
    claim_variant(variant_dir, overrides)
    base_dir = a.root / "search" / a.dataset / a.supernet_from if a.supernet_from else None

    rows, failures = [], []

    run = not a.report_only

    def random_task(point: Point, path: Path) -> dict | None:
        res = retrain_run(path, 0, recipe, a.dataset, a.root, run)
        return res and _row("random", "", point, 0, res, Arch.load(path))

    def searched_task(point: Point, seed: int) -> dict | None:
        arch_path = search_run(point, seed, variant_dir, overrides, a.dataset, run, base_dir)
        res = arch_path and retrain_run(arch_path, seed, recipe, a.dataset, a.root, run)
        return res and _row("searched", a.variant, point, seed, res, Arch.load(arch_path))

    tasks = []
    for point in points:
        draws = random_archs(point, a.k, a.dataset, a.root / "random" / a.dataset / point.tag)
        tasks += [] if a.no_random else [(random_task, (point, path)) for path in draws]
        if not a.no_search:
            tasks += [(searched_task, (point, s)) for s in seeds]
    # searches first: they take longest and gate their own retrains
    tasks.sort(key=lambda t: t[0] is random_task)
    t0 = time.perf_counter()
    if a.report_only:
        rows = [r for r in (fn(*args) for fn, args in tasks) if r is not None]
    else:
        with ThreadPoolExecutor(a.jobs) as pool:
            futures = {pool.submit(fn, *args): (fn.__name__, args) for fn, args in tasks}
            for i, fut in enumerate(as_completed(futures), 1):
                name, args = futures[fut]
                try:
                    rows.append(fut.result())
                    r = rows[-1]
                    print(f"[{i}/{len(tasks)} {time.perf_counter() - t0:.0f}s] {r['kind']} {r['device']} "
                          f"{r['latency_ms']:.2f} ms top-1 {r['top1']:.4f} ({r['choices']})", flush=True)
                except Exception as e:  # one failed run must not lose the others' results
                    failures.append(f"{name}{args}: {e}")
                    print(f"[{i}/{len(tasks)}] FAILED {name}: {e}", file=sys.stderr, flush=True)
    if not rows:
        print("no finished runs yet", file=sys.stderr)
        return 1
    report(pd.DataFrame(rows), a.out, recipe, a.dataset)
    for f in failures:
        print(f"failed: {f}", file=sys.stderr)
    return 1 if failures else 0


def provenance_note(predictors: pd.Series) -> str:
    """One sentence naming every predictor behind a table's latencies and what kind of number it gives."""
    def kind(name: str) -> str:
        if name.startswith("nnmeter/"):
            return "nn-Meter's built-in predictor"
        if name.startswith("measured/"):
            return "measured on this host"
        if name.removeprefix("standin/").split("+")[0] in ROOFLINE_DEVICES:
            return "an uncalibrated roofline stand-in, not nn-Meter"
        return "a calibrated stand-in, not nn-Meter"
    names = sorted(set(predictors.dropna().astype(str)) - {""})
    return ("Latencies are table sums from each device's predictor: "
            + "; ".join(f"`{n}` is {kind(n)}" for n in names) + ".")


def report(rows: pd.DataFrame, out: Path, recipe: list[str], dataset: str) -> None:
    """Merge these rows into the committed tables (other variants' rows are kept) and print them. One
    process at a time: two benchmark commands sharing ``out`` must not drop each other's rows."""
    csv = out / f"search_vs_random_{dataset}.csv"
    with _locked(out):
        if csv.exists():
            rows = pd.concat([pd.read_csv(csv, keep_default_na=False), rows])
        rows["variant"] = rows["variant"].fillna("").astype(str)
        rows = rows.drop_duplicates(["kind", "variant", "device", "target_ms", "seed", "choices"], keep="last")
        rows = rows.sort_values(["device", "target_ms", "kind", "variant", "seed"], ignore_index=True)
        summary = summarize(rows)
        note = provenance_note(rows["predictor"])
        atomic_write_text(csv, rows.to_csv(index=False))
        atomic_write_text(out / f"search_vs_random_{dataset}_summary.csv", summary.to_csv(index=False))
        md = markdown(summary, recipe, note)
        atomic_write_text(out / f"search_vs_random_{dataset}.md", md)
        plot(rows, out / f"search_vs_random_{dataset}.png")
    print(md)


if __name__ == "__main__":
    sys.exit(main())
