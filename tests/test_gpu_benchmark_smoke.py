"""The GPU check's benchmark runs end to end here, without a GPU, and prints its sections.

On a machine without CUDA, ``benchmarks/gpu.py`` measures the same things on the CPU (and says
so); this checks that it runs and prints its headings, never its figures. About 20 s: the JAX
and TensorFlow sections start a Python each.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the benchmark times torch regions")

from benchmarks import gpu


@pytest.mark.slow
def test_the_gpu_benchmark_runs_quick_and_prints_its_sections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gpu.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(gpu.HEADING)
    for heading in (gpu.SECTION_A, gpu.SECTION_B, gpu.SECTION_C, gpu.SECTION_D, gpu.SECTION_E):
        assert f"\n{heading}\n" in out
    assert "\ntargets" in out
    assert "FAILED" not in out
