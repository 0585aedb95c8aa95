import pandas as pd

from experiments.train_speed import STEPS, arch_choices, main, make_step
from nas.accelerator import resolve
from search_spaces.quadratic import QuadDWConv2d, set_impl


def test_train_speed_writes_side_by_side_rows(tmp_path):
    assert main(["--archs", "vpu30", "--strides", "2", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "train_speed.csv")
    steps = df[df.step.isin(STEPS)]
    assert set(steps.step) == set(STEPS) and (steps.precision.astype(str) == "32").all()  # cpu default: fp32 only
    assert (df.today_img_s > 0).all() and (df.new_img_s > 0).all()
    assert ((df.ratio - df.new_img_s / df.today_img_s).abs() < 1e-6 * df.ratio).all()
    assert "batching (one epoch)" in set(df.step)
    assert "stride 2: new / today" in (tmp_path / "train_speed.md").read_text()


def test_the_60ms_draw_and_the_two_paths_differ_only_in_the_mixer_kernel():
    vpu30, vpu60 = arch_choices("vpu30"), arch_choices("vpu60")
    assert len(vpu30) == len(vpu60) == 20
    assert sum(c != "identity" for c in vpu60) > sum(c != "identity" for c in vpu30) == 5
    net, _ = make_step("retrain step", vpu30, 2, resolve("cpu"))
    assert set_impl(net, "separate") == 5 and all(m.impl == "separate" for m in net.modules()
                                                   if isinstance(m, QuadDWConv2d))
