"""Keras on this CPU machine: real model.fit loops with the TimerCallback (Keras 3 on
TensorFlow, and tf-keras), TensorFlow's device clock, and Deep500's timer_tf."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
keras = pytest.importorskip("keras", reason="the tensorflow extra is not installed")

import numpy as np  # noqa: E402

from maeltrace import Timer, TimeType  # noqa: E402
from maeltrace.errors import DeviceClockWarning  # noqa: E402
from maeltrace.keras import (  # noqa: E402
    FIT,
    PREDICT,
    PREDICT_BATCH,
    TEST,
    TEST_BATCH,
    VALIDATION,
    VALIDATION_BATCH,
    TimerCallback,
)
from tests.helpers import counts, parent_keys, work_counts  # noqa: E402

EPOCHS, SAMPLES, BATCH = 2, 48, 16
BATCHES = SAMPLES // BATCH


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 4)).astype("float32")
    return x, x @ np.arange(4.0, dtype="float32")[:, None]


def _model(api: Any) -> Any:
    """A small regression model built with ``keras`` or ``tf_keras``."""
    layers = api.layers
    model = api.Sequential(
        [layers.Input((4,)), layers.Dense(8, activation="relu"), layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def _fit(api: Any, callback: Any, **kwargs: Any) -> None:
    x, y = _data()
    _model(api).fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[callback], **kwargs
    )


class TestKeras3:
    def test_fit_records_fit_epochs_batches_io_and_validation(self) -> None:
        assert keras.backend.backend() == "tensorflow"
        tmr = Timer()
        with pytest.warns(DeviceClockWarning, match="no GPU"):
            _fit(keras, TimerCallback(tmr, gpu=True), validation_data=_data())
        n = EPOCHS * BATCHES
        assert counts(tmr.records()) == {
            FIT: 1,
            "epoch": EPOCHS,
            "io": n,
            "batch": n,
            VALIDATION: EPOCHS,
            VALIDATION_BATCH: n,
        }
        assert tmr.get_time_stats(TimeType.BATCH).count == n
        assert tmr.get_time_stats(VALIDATION_BATCH).count == n
        assert parent_keys(tmr.records()) == {
            FIT: {None},
            "epoch": {FIT},
            "io": {"epoch"},
            "batch": {"epoch"},
            VALIDATION: {"epoch"},
            VALIDATION_BATCH: {VALIDATION},
        }
        # No GPU here: no GPU rows, and the report says why.
        clock = tmr.device_clock
        assert clock is not None and clock.name == "cpu-sync"
        with pytest.raises(KeyError, match="no GPU: TensorFlow sees no GPU"):
            tmr.get_time(TimeType.BATCH, gpu=True)
        assert "No GPU rows: no GPU was found (TensorFlow sees no GPU)" in (
            tmr.summary().to_markdown()
        )

    def test_the_tf_sync_clock_syncs_both_ends_of_every_nth_batch(self) -> None:
        from maeltrace.devices.tensorflow import TfSyncClock

        # Built directly: tf_clock chooses it only where TensorFlow sees a GPU.
        tmr = Timer(device=lambda times: TfSyncClock(times, sync_every=2))
        x, y = _data()
        _model(keras).fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[TimerCallback(tmr, gpu=True)],
        )  # type: ignore[attr-defined]
        n = EPOCHS * BATCHES
        assert tmr.get_time_stats(TimeType.BATCH).count == n
        assert tmr.get_time_stats(TimeType.BATCH, gpu=True).count == (n + 1) // 2
        clock = tmr.device_clock
        assert clock is not None and clock.name == "tf-sync"
        assert clock.host_syncs == 2 * ((n + 1) // 2)  # both ends of every other batch
        text = tmr.summary().to_markdown()
        assert "GPU rows: tf-sync: tf.test.experimental.sync_devices()" in text

    def test_evaluate_outside_fit_is_a_test_not_a_validation(self) -> None:
        tmr = Timer()
        x, y = _data()
        model = _model(keras)
        callback = TimerCallback(tmr)
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
        model.evaluate(x, y, batch_size=BATCH, verbose=0, callbacks=[callback])
        assert counts(tmr.records()) == {
            FIT: 1,
            "epoch": 1,
            "io": BATCHES,
            "batch": BATCHES,
            TEST: 1,
            TEST_BATCH: BATCHES,
        }
        assert parent_keys(tmr.records())[TEST] == {None}

    def test_predict_batches_are_timed(self) -> None:
        tmr = Timer()
        x, _ = _data()
        _model(keras).predict(x, batch_size=BATCH, verbose=0, callbacks=[TimerCallback(tmr)])
        assert counts(tmr.records()) == {PREDICT: 1, PREDICT_BATCH: BATCHES}
        assert tmr.device_clock is None

    def test_the_callback_needs_a_maeltrace_timer(self) -> None:
        with pytest.raises(TypeError, match="maeltrace Timer"):
            TimerCallback(object())  # type: ignore[arg-type]  # the mistake under test
        with pytest.raises(ValueError, match="batch_size must be positive"):
            TimerCallback(Timer(), batch_size=0)


class TestKerasItems:
    """Each batch region counts its samples where Keras knows them, and only there."""

    def test_array_batches_count_their_samples_the_last_smaller_one_too(self) -> None:
        tmr = Timer()
        x, y = _data()
        model = _model(keras)
        callback = TimerCallback(tmr)
        # 48 samples in batches of 20: 20, 20 and 8; validation on 30: 20 and 10.
        model.fit(
            x, y, batch_size=20, epochs=EPOCHS, verbose=0, callbacks=[callback],
            validation_data=(x[:30], y[:30]),
        )  # fmt: skip
        model.evaluate(x, y, batch_size=32, verbose=0, callbacks=[callback])
        model.predict(x[:10], batch_size=4, verbose=0, callbacks=[callback])
        got = work_counts(tmr.records())
        assert got == {
            "batch": [(20, 0), (20, 0), (8, 0)] * EPOCHS,
            VALIDATION_BATCH: [(20, 0), (10, 0)] * EPOCHS,
            TEST_BATCH: [(32, 0), (16, 0)],
            PREDICT_BATCH: [(4, 0), (4, 0), (2, 0)],
        }
        assert sum(items for items, _ in got["batch"]) == EPOCHS * SAMPLES

    def test_steps_per_execution_counts_every_step_of_a_callback_batch(self) -> None:
        tmr = Timer()
        x, y = _data()
        model = _model(keras)
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
        # 48 samples in batches of 10: steps of 10, 10, 10, 10, 8; executions of two steps.
        model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[TimerCallback(tmr)])
        got = work_counts(tmr.records())["batch"]
        assert sum(items for items, _ in got) == SAMPLES
        assert got[0] == (20, 0)

    def test_a_dataset_with_a_static_batch_size_counts_it(self) -> None:
        tmr = Timer()
        x, y = _data()
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True)
        _model(keras).fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[TimerCallback(tmr)])
        assert work_counts(tmr.records()) == {"batch": [(BATCH, 0)] * BATCHES}

    def test_a_dataset_of_unknown_batch_size_counts_nothing_unless_told(self) -> None:
        x, y = _data()
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)  # shape (None, 4)
        tmr = Timer()
        _model(keras).fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[TimerCallback(tmr)])
        assert counts(tmr.records())["batch"] == BATCHES
        assert work_counts(tmr.records()) == {}  # never a guess
        told = Timer()
        callback = TimerCallback(told, batch_size=BATCH)
        _model(keras).fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
        assert work_counts(told.records()) == {"batch": [(BATCH, 0)] * BATCHES}

    def test_a_given_batch_size_never_overrides_what_keras_knows(self) -> None:
        tmr = Timer()
        x, y = _data()
        _model(keras).fit(
            x, y, batch_size=20, epochs=1, verbose=0, callbacks=[TimerCallback(tmr, batch_size=7)]
        )
        assert work_counts(tmr.records()) == {"batch": [(20, 0), (20, 0), (8, 0)]}


class TestTfKeras:
    def test_fit_with_the_keras_2_api(self) -> None:
        tf_keras = pytest.importorskip("tf_keras", reason="tf-keras is not installed")
        from maeltrace.tf_keras import TimerCallback as TfKerasCallback

        tmr = Timer(device="tensorflow")
        x, y = _data()
        _model(tf_keras).fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[TfKerasCallback(tmr, gpu=True)],
        )  # type: ignore[attr-defined]
        n = EPOCHS * BATCHES
        assert counts(tmr.records()) == {FIT: 1, "epoch": EPOCHS, "io": n, "batch": n}
        assert tmr.get_time_stats(TimeType.BATCH).count == n
        assert tmr.device_clock is not None and tmr.device_clock.name == "cpu-sync"  # no GPU
        assert work_counts(tmr.records()) == {}  # tf-keras does not say its batch size

    def test_tf_keras_batches_count_a_given_batch_size(self) -> None:
        tf_keras = pytest.importorskip("tf_keras", reason="tf-keras is not installed")
        from maeltrace.tf_keras import TimerCallback as TfKerasCallback

        tmr = Timer()
        x, y = _data()
        callback = TfKerasCallback(tmr, batch_size=BATCH)
        _model(tf_keras).fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
        assert work_counts(tmr.records()) == {"batch": [(BATCH, 0)] * BATCHES}


class TestDeep500Tf:
    def test_figure_3_runs_by_changing_only_the_import(self) -> None:
        from maeltrace.deep500 import timer_tf as timer

        x, y = _data()
        model = _model(keras)
        with pytest.warns(DeviceClockWarning):
            tmr = timer.CPUGPUTimer()  # the seed's Figure 3, as printed but for the import
        model.fit(
            x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0,  # Other args...
            callbacks=[timer.TimerCallback(tmr, gpu=True)]
        )  # fmt: skip
        assert len(tmr.get_time(timer.TimeType.EPOCH)) == EPOCHS
        assert len(tmr.get_time(timer.TimeType.BATCH)) == EPOCHS * BATCHES
        assert tmr.get_time(timer.TimeType.BATCH, gpu=True) == []  # no GPU here
        assert tmr.get_time(timer.TimeType.EPOCH, gpu=True) == []
        tmr.print_all_time_stats()
