"""benchmarks/gpu.py runs end to end on CPU with tiny shapes and writes its JSON (the GPU figures
themselves come from a run on a GPU; see docs/training.md#fast-path)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_with_tiny_shapes(tmp_path):
    import gpu

    out = tmp_path / "gpu.json"
    gpu.main(["--tiny", "--backend", "eager", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["tiny"] and not report["skipped"]
    assert [(s["batch"], s["guided"]) for s in report["sampling"]] == [(2, False), (2, True)]
    for s in report["sampling"]:
        assert s["eager_img_per_s"] > 0 and s["fast_img_per_s"] > 0
        assert s["max_diff_over_rms"] < 1e-4  # float32 rounding only
    kinds = [(t["precision"], t["fast"]) for t in report["training"]]
    assert kinds == [("fp16", False), ("fp16", True), ("bf16", True)]
    for t in report["training"]:
        assert t["img_per_s"] > 0
        if t["fast"]:  # on CPU both precisions compute in float32 (mixed precision is CUDA-only)
            assert t["loss_rel_error"] < 1e-5 and t["grad_rel_error"] < 1e-4 and t["compile_s"] > 0
