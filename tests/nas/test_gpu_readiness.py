"""Issue 41, on the CPU: host reads per step, bytes all-reduced per DDP weight step (gloo, 2 processes), the
rank-0 table build, GPU sharing under torchrun, and the small CUDA correctness items (faked where they need a GPU)."""

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

import nas.accelerator as accelerator
from experiments.step_overhead import HostReads, ddp_bytes, retrain_reads, search_reads
from nas import checkpoint
from nas.accelerator import Accelerator, AcceleratorUnavailable
from nas.loops import DistInfo, all_reduce_mean_, rank0_builds
from nas.steps import export_ms, export_ms_tensor
from search_spaces.quadratic import _dense_taps
from search_spaces.spaces import get_space
from supernet.mixed import host_ints
from supernet.supernet import Supernet

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


# -- host reads --------------------------------------------------------------------------------
def test_the_read_counter_counts_every_kind_of_read_but_host_draws():
    t = torch.tensor([1.5, 2.0])
    with HostReads() as reads:
        t.sum().item(), t.cpu(), t.tolist(), float(t[0]), int(t[1]), bool(t[0] > 0), [0, 1, 2][t[1].long()]
        host_ints(torch.randint(3, (2,)))  # .numpy(): a device tensor cannot take this path, so it never syncs
    assert reads.count == 7


PROXYLESS = pytest.param(["train.sampling=proxyless", "mode=full_v2"], marks=pytest.mark.slow, id="proxyless-full_v2")


@pytest.mark.parametrize("extra", [pytest.param([], id="band-two"), PROXYLESS])
def test_a_search_step_reads_at_most_two_values_from_the_device(tmp_path, extra):
    reads = search_reads(tmp_path, extra)
    assert reads["steps"] >= 10
    # one read of the logits' host copy per arch step, one of the losses every tb.STEP_EVERY steps
    assert reads["max"] <= 2 and reads["mean"] <= 1.2, reads["where"]


def test_a_retrain_step_reads_at_most_one_value_from_the_device(tmp_path, digits_arch_json):
    reads = retrain_reads(tmp_path, digits_arch_json)
    assert reads["steps"] >= 10
    assert reads["max"] <= 1 and reads["mean"] <= 0.2, reads["where"]


def test_the_device_side_export_latency_equals_the_host_one():
    model = Supernet(get_space("quadra").with_input((1, 16, 16), 10, 2))
    g = torch.Generator().manual_seed(0)
    lut = [torch.rand(len(m.names), generator=g) * 3 for m in model.mixed_ops()]
    with torch.no_grad():
        for m in model.mixed_ops():
            m.alpha.copy_(torch.randn(len(m.names), generator=g))
    expected = 1.25 + sum(float(t[int(m.alpha.argmax())]) for m, t in zip(model.mixed_ops(), lut))
    assert export_ms(model, lut, 1.25) == expected
    assert export_ms_tensor(model, lut, 1.25).dtype == torch.float64
    assert float(export_ms_tensor(model, lut, 1.25)) == expected


def test_path_sampling_reads_the_logits_once_per_update():
    model = Supernet(get_space("quadra").with_input((1, 16, 16), 10, 2))
    gen = torch.Generator().manual_seed(0)
    with HostReads() as reads:
        model.resample("arch", "two", gen)
        model.resample("weight", "two", gen, "proxyless")
    assert reads.count == 1  # every layer's logits in one copy, reused until they change
    with torch.no_grad():
        model.mixed_ops()[3].alpha.add_(1.0)
    with HostReads() as reads:
        model.resample("weight", "two", gen, "proxyless")
    assert reads.count == 1  # the changed logits are read again


# -- distributed (gloo, 2 processes) -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    port = _free_port()
    mp.spawn(_join, args=(port, fn, args), nprocs=2, join=True)


def _join(rank: int, port: int, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _tables_worker(rank: int, out: str) -> None:
    import nas.search
    real = nas.search.get_table

    def counted(*args, **kwargs):
        (Path(out) / f"built-{rank}").touch()
        time.sleep(1.0)  # rank 1 must wait for this, not build its own
        return real(*args, **kwargs)

    nas.search.get_table = counted
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("search", overrides=["dataset=digits", "device=vpu", "latency=12ms", "log_devices=[vpu,gpu]",
                                           "accelerator=cpu", "threads=1"])
    setup = nas.search.prepare(cfg, DistInfo(rank, 2))
    (Path(out) / f"tables-{rank}.json").write_text(json.dumps({n: t.to_json() for n, t in setup.tables.items()}))
    (Path(out) / f"done-{rank}").write_text(str(time.time()))


def test_rank0_builds_the_latency_tables_and_the_other_rank_gets_them(tmp_path):
    _spawn(_tables_worker, str(tmp_path))
    assert (tmp_path / "built-0").exists() and not (tmp_path / "built-1").exists()
    done0, done1 = (float((tmp_path / f"done-{r}").read_text()) for r in (0, 1))
    assert done1 >= (tmp_path / "built-0").stat().st_mtime + 1.0  # it waited for rank 0's build
    t0, t1 = (json.loads((tmp_path / f"tables-{r}.json").read_text()) for r in (0, 1))
    assert t0 == t1 and set(t0) == {"vpu", "gpu"}


def _failing_worker(rank: int, out: str) -> None:
    def build():
        raise OSError("disk full")

    try:
        rank0_builds(build, str, str, DistInfo(rank, 2))
    except Exception as e:  # noqa: BLE001 - the test checks what each rank saw
        (Path(out) / f"error-{rank}").write_text(f"{type(e).__name__}: {e}")


def test_an_error_on_rank0_reaches_every_rank_instead_of_a_hang(tmp_path):
    _spawn(_failing_worker, str(tmp_path))
    assert (tmp_path / "error-0").read_text() == "OSError: disk full"
    assert (tmp_path / "error-1").read_text() == ("RuntimeError: rank 0 failed before this rank could continue: "
                                                  "OSError: disk full")


def _reduce_worker(rank: int, out: str) -> None:
    calls = []
    real = dist.all_reduce
    dist.all_reduce = lambda t, *a, **k: (calls.append(t.numel()), real(t, *a, **k))[1]
    conv = torch.full((4, 3, 2, 2), float(rank + 1)).contiguous(memory_format=torch.channels_last)
    tensors = [torch.full((5,), 2.0 * rank), conv, torch.tensor(float(rank))]
    all_reduce_mean_(tensors)
    dist.all_reduce = real
    ok = (torch.equal(tensors[0], torch.full((5,), 1.0)) and torch.equal(tensors[1], torch.full((4, 3, 2, 2), 1.5))
          and tensors[1].is_contiguous(memory_format=torch.channels_last) and float(tensors[2]) == 0.5)
    (Path(out) / f"reduce-{rank}").write_text(json.dumps({"ok": ok, "calls": calls}))


def test_gradients_are_averaged_in_one_flattened_all_reduce(tmp_path):
    _spawn(_reduce_worker, str(tmp_path))
    for r in (0, 1):
        got = json.loads((tmp_path / f"reduce-{r}").read_text())
        assert got == {"ok": True, "calls": [5 + 48 + 1]}


def _diverging_worker(rank: int, out: str) -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from nas.loops import TrainingDiverged
    from nas.search import _StepLog
    cfg = OmegaConf.create({"train": {"warmup_epochs": 0, "lr": 1.0}, "arch": {"lr": 1.0}})
    log = _StepLog(cfg, 0, SimpleNamespace(step=0, epoch=0), Path(out), None, None, distributed=True)
    for step in range(3):
        log.st.step = step
        loss = torch.tensor(float("nan") if rank == 1 and step == 1 else 1.0)
        log.weight(loss, torch.tensor(0.5))
    try:
        log.flush()
        (Path(out) / f"diverged-{rank}").write_text("no")
    except TrainingDiverged as e:
        (Path(out) / f"diverged-{rank}").write_text(str(e))


def test_a_loss_that_diverged_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    _spawn(_diverging_worker, str(tmp_path))
    for r in (0, 1):
        assert (tmp_path / f"diverged-{r}").read_text().startswith("supernet loss is nan at epoch 1, global step 1")


def _finalists_worker(rank: int, out: str) -> None:
    import nas.derivations

    def fake(cfg, setup, arch, alone=False):
        (Path(out) / f"trained-{rank}-{arch.choices[0]}").write_text(str(alone))
        return float(len(arch.choices[0]))

    nas.derivations.train_standalone = fake
    setup = type("Setup", (), {"train_space": get_space("quadra").with_input((1, 16, 16), 10, 2)})()
    names = ["identity", "quadra_k3_e2", "quadra_k5_e2", "quadra_k7_e2", "quadra_k3_e4"]
    top = [{"choices": [n] + ["identity"] * 19} for n in names]
    scores = nas.derivations._finalist_scores(None, setup, top)
    (Path(out) / f"scores-{rank}").write_text(json.dumps(scores))


def test_ranks_share_the_finalists_and_gather_every_score(tmp_path):
    _spawn(_finalists_worker, str(tmp_path))
    expected = [8.0, 12.0, 12.0, 12.0, 12.0]
    assert all(json.loads((tmp_path / f"scores-{r}").read_text()) == expected for r in (0, 1))
    trained = sorted(p.name for p in tmp_path.glob("trained-*"))
    assert trained == ["trained-0-identity", "trained-0-quadra_k3_e4", "trained-0-quadra_k5_e2",
                       "trained-1-quadra_k3_e2", "trained-1-quadra_k7_e2"]
    assert all(p.read_text() == "True" for p in tmp_path.glob("trained-*"))  # alone: no collective inside


def _eval_set():
    from nas.data import TensorImageDataset
    g = torch.Generator().manual_seed(0)
    images, targets = torch.randn(301, 1, 4, 4, generator=g), torch.randint(3, (301,), generator=g)
    return TensorImageDataset(images, targets, list("abc"))


def _eval_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


def _shard_worker(rank: int, out: str) -> None:
    from nas.data import make_loader
    from nas.loops import evaluate, shard
    part = shard(_eval_set())
    res = evaluate(_eval_net(), make_loader(part, 64, False, 0))
    (Path(out) / f"eval-{rank}").write_text(json.dumps({"n": len(part), "top1": res["top1"]}))


def test_ranks_evaluate_their_share_and_agree_on_the_whole_sets_score(tmp_path):
    from nas.data import make_loader
    from nas.loops import evaluate
    whole = evaluate(_eval_net(), make_loader(_eval_set(), 64, False, 0))["top1"]
    _spawn(_shard_worker, str(tmp_path))
    got = [json.loads((tmp_path / f"eval-{r}").read_text()) for r in (0, 1)]
    assert [g["n"] for g in got] == [151, 150]
    assert got[0]["top1"] == got[1]["top1"] == whole


@pytest.mark.slow
def test_a_ddp_weight_step_all_reduces_only_the_path_that_trained(tmp_path):
    b = ddp_bytes(tmp_path)
    assert b["weight_steps"] >= 10 and b["arch_steps"] >= 5
    assert b["bytes_per_weight_step"] <= 1.2 * b["active_bytes"]  # was the whole supernet, ~50x
    assert b["calls_per_weight_step"] == 1 and b["calls_per_arch_step"] == 1  # was one call per layer


# -- GPUs, faked ------------------------------------------------------------------------------
def test_processes_beyond_the_gpus_share_them_over_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert accelerator.gpu_index() == 0 and accelerator.shares_gpus()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert accelerator.gpu_index() == 1 and not accelerator.shares_gpus()


def test_bf16_is_checked_against_the_gpu_up_front(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(AcceleratorUnavailable, match="precision=bf16 is invalid: Tesla V100 has no bfloat16"):
        accelerator.check_precision_support("cuda", "bf16")
    accelerator.check_precision_support("cpu", "bf16")
    accelerator.check_precision_support("cuda", "16")


def test_tf32_is_float32_on_the_cpu_and_fast_math_on_cuda():
    cpu = accelerator.resolve("cpu", "tf32")
    assert cpu.precision == "tf32" and not cpu.scaler.is_enabled()
    with cpu.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        accelerator.set_cuda_math("tf32")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        accelerator.set_cuda_math("32")
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.benchmark)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


def test_a_resumed_rank_continues_the_stream_of_the_gpu_it_trains_on(monkeypatch):
    """rank 0 wrote GPU 0's advanced stream and GPU 1's untouched one; rank 1 must continue the former."""
    advanced, untouched = torch.tensor([7], dtype=torch.uint8), torch.tensor([1], dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [advanced, untouched])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a: advanced)
    state = checkpoint.rng_state()
    current: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: current.update(gpu1=states[1]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": current.update(gpu1=s))
    checkpoint.set_rng_state(state)
    assert torch.equal(current["gpu1"], advanced)


def test_each_finalist_trains_with_its_own_loss_scaler(monkeypatch):
    import nas.search
    scalers = []
    real = Accelerator.apply

    def apply(self, optimizer):
        scalers.append(self.scaler)
        return real(self, optimizer)

    monkeypatch.setattr(Accelerator, "apply", apply)
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("search", overrides=["dataset=digits", "device=vpu", "latency=30ms", "log_devices=[vpu]",
                                           "accelerator=cpu", "threads=1", "derive.train_epochs=0.1"])
    setup = nas.search.prepare(cfg, DistInfo())
    arch = setup.train_space.random_arch(0)
    for _ in range(2):
        nas.derivations.train_standalone(cfg, setup, arch)
    first, second = {id(s) for s in scalers[:len(scalers) // 2]}, {id(s) for s in scalers[len(scalers) // 2:]}
    assert len(first) == len(second) == 1 and first != second and id(setup.accel.scaler) not in first | second


def test_the_dense_index_is_copied_to_a_device_once():
    meta = torch.device("meta")
    a, b = _dense_taps(3, 3, 3, meta), _dense_taps(3, 3, 3, meta)
    assert a is b and a.device == meta
    assert _dense_taps(3, 3, 3, torch.device("cpu")).device.type == "cpu"
