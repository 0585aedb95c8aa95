"""Without the ``nnmeter`` extra (nn-meter, onnxsim) latency falls back to the stand-ins, and asking for
nn-Meter says which extra to install instead of a raw ImportError."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.modules["nn_meter"] = None  # what an environment without the extra looks like to imports
    sys.modules["onnxsim"] = None
    from torch import nn
    from latency import nnmeter
    from latency.profiles import load_profile, resolve_predictor

    home = Path(sys.argv[1])
    name = "myriadvpu_openvino2019r2"
    # the user has nn-Meter's predictor files from an earlier install, but no nn-meter package now
    (home / ".nn_meter" / "config").mkdir(parents=True)
    (home / ".nn_meter" / "config" / "predictors.yaml").write_text(
        f"- name: {name}\\n  version: 1.0\\n  category: vpu\\n  download: https://example.invalid/x.zip\\n"
        "  kernel_predictors: [conv-bn-relu]\\n")
    folder = home / ".nn_meter" / "data" / "predictor" / name
    folder.mkdir(parents=True)
    (folder / "conv-bn-relu.pkl").write_bytes(b"")
    (folder / "fusion_rules.json").write_text("{}")

    out = {"files_complete": nnmeter.missing_predictor_files(name) == [],
           "builtin_available": nnmeter.builtin_available(name),
           "vpu": resolve_predictor(load_profile("vpu")).name}
    for key, call in (("predictor", lambda: nnmeter.NNMeterPredictor(name)),
                      ("onnx", lambda: nnmeter.to_onnx_model(nn.Conv2d(3, 4, 3), (1, 3, 8, 8)))):
        try:
            call()
            out[key] = "no error"
        except Exception as e:
            out[key] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
""")


def test_without_the_extra_profiles_use_standins_and_errors_name_the_extra(tmp_path):
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                     "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["files_complete"] and not out["builtin_available"]
    assert out["vpu"].startswith("standin/")
    assert "nn-meter is not installed" in done.stderr  # one warning says why the files are not used
    for key in ("predictor", "onnx"):
        assert out[key].startswith("NNMeterNotInstalledError"), out[key]
        assert "pip install 'quadranas[nnmeter]'" in out[key]
    assert "'nn_meter'" in out["predictor"] and "'onnxsim'" in out["onnx"]
