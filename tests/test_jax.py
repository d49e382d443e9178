"""JAX on this CPU machine: a real jitted training step, waiting on outputs, compiling regions
set apart, and XProf annotations."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax", reason="the jax extra is not installed")

import jax.numpy as jnp  # noqa: E402

from maeltrace import Timer, TimeType  # noqa: E402
from maeltrace.errors import DeviceClockWarning  # noqa: E402
from tests.helpers import counts  # noqa: E402

STEPS = 6


def _loss(w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((x @ w - y) ** 2)


def _train(tmr: Timer, block: bool = True) -> jax.Array:
    # A new jitted function per run, so its first call compiles whatever ran before.
    _step = jax.jit(lambda w, x, y: w - 0.1 * jax.grad(_loss)(w, x, y))
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (32, 4))
    y = x @ jnp.arange(4.0)
    w = jnp.zeros(4)
    with tmr.region(TimeType.EPOCH):
        for _ in range(STEPS):
            with tmr.region(TimeType.BATCH, gpu=True) as region:
                w = _step(w, x, y)
                if block:
                    w = region.block(w)
    return w


class TestJaxClock:
    def test_the_first_call_compiles_and_is_reported_apart(self) -> None:
        tmr = Timer(device="jax")
        _train(tmr)
        assert counts(tmr.records()) == {"epoch": 1, "batch": STEPS}
        # One region compiled (the jitted step's first call); the steady state has the rest.
        assert tmr.get_time_stats(TimeType.BATCH).count == STEPS - 1
        summary = tmr.summary()
        first = next(r for r in summary.rows if r.compiled)
        assert first.stats.count == 1
        assert first.stats.max > tmr.get_time_stats(TimeType.BATCH).median
        text = summary.to_markdown()
        assert "| Batch (first call) " in text
        if jax.default_backend() == "cpu":
            # No GPU: the CPU rows only, and the report says why.
            assert not any(r.device for r in summary.rows)
            assert "No GPU rows: no GPU was found (JAX's backend is cpu)" in text
            with pytest.raises(KeyError, match="no GPU: JAX's backend is cpu"):
                tmr.get_time(TimeType.BATCH, gpu=True)
        else:
            assert tmr.get_time_stats(TimeType.BATCH, gpu=True).count == STEPS - 1
            assert "GPU rows: jax-block: host clock from region start" in text

    def test_block_waits_for_the_outputs_and_returns_them(self) -> None:
        tmr = Timer(device="jax")
        w = _train(tmr)
        assert jnp.allclose(w, _train(Timer(enabled=False)))

    def test_a_gpu_region_without_block_warns_once_and_has_no_device_time(self) -> None:
        tmr = Timer(device="jax")
        if jax.default_backend() == "cpu":  # no GPU: no region has a device time to miss
            with pytest.warns(DeviceClockWarning, match="no GPU was found") as caught:
                _train(tmr, block=False)
            steady = STEPS - 1  # the compiling first call is still set apart
        else:
            with pytest.warns(DeviceClockWarning, match="without region.block") as caught:
                _train(tmr, block=False)
            steady = STEPS
        assert len([w for w in caught if issubclass(w.category, DeviceClockWarning)]) == 1
        assert tmr.get_time_stats(TimeType.BATCH).count == steady
        with pytest.raises(KeyError, match="with a device time"):
            tmr.get_time(TimeType.BATCH, gpu=True)

    def test_xprof_annotations_wrap_the_same_regions(self) -> None:
        tmr = Timer(device="jax", xprof=True)
        _train(tmr)
        tmr.start("manual")
        tmr.end("manual")
        assert counts(tmr.records()) == {"epoch": 1, "batch": STEPS, "manual": 1}

    def test_block_on_a_cpu_region_still_waits(self) -> None:
        tmr = Timer()
        with tmr.region("plain") as region:
            out = region.block(jnp.ones(3) * 2)
        assert float(out.sum()) == 6.0
        assert tmr.device_clock is None
