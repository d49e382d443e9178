"""Property tests of `maeltrace.stats.compute_stats` against exact references.

`compute_stats` promises exact integer/rational arithmetic rounded once to float seconds, so
every field except ``stdev`` is compared for equality with a reference computed exactly by
`statistics` on `fractions.Fraction` seconds; ``stdev`` (a float square root) is compared with
a correctly rounded reference to a few ulps. Percentiles are also checked against
``numpy.percentile(method="linear")`` as an independent implementation.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from maeltrace.stats import TimeStats, compute_stats

NS_PER_S = 10**9
HUGE = 10**13
PERCENTS = (90, 95, 99)

SETTINGS = settings(max_examples=200, deadline=None)

# Arbitrary non-negative nanosecond durations, up to ~10**13 ns (about 2.8 hours).
any_ns = st.integers(min_value=0, max_value=HUGE)
huge_ns = st.integers(min_value=HUGE - 10**6, max_value=HUGE)
few_distinct_ns = st.sampled_from([0, 1, 2, 999_999_999, 1_000_000_000, HUGE])

durations = st.one_of(
    st.lists(any_ns, min_size=1, max_size=200),
    st.lists(any_ns, min_size=1, max_size=2),
    st.lists(huge_ns, min_size=1, max_size=100),
    st.lists(few_distinct_ns, min_size=1, max_size=300),
    st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=300),
)


def seconds(values: list[int]) -> list[Fraction]:
    return [Fraction(v, NS_PER_S) for v in values]


def exact_percentile(values: list[int], percent: int) -> Fraction:
    """Hyndman-Fan type 7 (numpy "linear"), exactly, in seconds."""
    data = sorted(seconds(values))
    if len(data) == 1:
        return data[0]
    return statistics.quantiles(data, n=100, method="inclusive")[percent - 1]


class TestComputeStatsMatchesExactReference:
    @SETTINGS
    @given(durations)
    @example([0])
    @example([HUGE])
    @example([HUGE, HUGE - 1])
    @example([1, 2])
    @example([0] * 50)
    def test_min_max_total_count_are_exact(self, values: list[int]) -> None:
        stats = compute_stats(values)
        secs = seconds(values)
        assert stats.count == len(values)
        assert stats.min == float(min(secs))
        assert stats.max == float(max(secs))
        assert stats.total == float(sum(secs))

    @SETTINGS
    @given(durations)
    @example([1, 2])
    @example([HUGE, HUGE - 1, HUGE - 1])
    def test_mean_is_the_exact_mean_rounded_once(self, values: list[int]) -> None:
        stats = compute_stats(values)
        assert stats.mean == float(statistics.mean(seconds(values)))
        assert math.isclose(stats.mean, statistics.fmean(values) / NS_PER_S, rel_tol=1e-12)

    @SETTINGS
    @given(durations)
    @example([1, 2])
    @example([0, HUGE])
    @example([3, 1, 2, 2])
    def test_median_is_the_exact_median_rounded_once(self, values: list[int]) -> None:
        stats = compute_stats(values)
        assert stats.median == float(statistics.median(seconds(values)))
        assert math.isclose(stats.median, statistics.median(values) / NS_PER_S, rel_tol=1e-12)

    @SETTINGS
    @given(durations)
    @example([7])
    @example([0, HUGE])
    @example([HUGE, HUGE - 1])
    @example([5] * 100)
    def test_stdev_is_the_sample_stdev(self, values: list[int]) -> None:
        stats = compute_stats(values)
        if len(values) == 1:
            assert stats.stdev == 0.0
            return
        # statistics.stdev on Fractions is computed exactly and correctly rounded.
        reference = statistics.stdev(seconds(values))
        assert math.isclose(stats.stdev, reference, rel_tol=1e-14, abs_tol=0.0)
        assert math.isclose(stats.stdev, statistics.stdev(values) / NS_PER_S, rel_tol=1e-12)

    @SETTINGS
    @given(durations)
    @example([0, 1])
    @example([0, HUGE])
    @example([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    @example([HUGE, 0, HUGE - 1])
    def test_percentiles_are_exact_linear_interpolation(self, values: list[int]) -> None:
        stats = compute_stats(values)
        for percent in PERCENTS:
            got = getattr(stats, f"p{percent}")
            assert got == float(exact_percentile(values, percent)), percent

    @SETTINGS
    @given(durations)
    @example([0, 1])
    @example([0, HUGE])
    def test_percentiles_match_numpy_linear(self, values: list[int]) -> None:
        stats = compute_stats(values)
        expected = np.percentile(np.asarray(values, dtype=np.float64), PERCENTS, method="linear")
        for percent, want_ns in zip(PERCENTS, expected, strict=True):
            got = getattr(stats, f"p{percent}")
            assert math.isclose(got, float(want_ns) / NS_PER_S, rel_tol=1e-9, abs_tol=1e-18)

    @SETTINGS
    @given(st.lists(any_ns, min_size=2, max_size=200))
    def test_percentiles_match_statistics_quantiles_inclusive_on_ints(
        self, values: list[int]
    ) -> None:
        stats = compute_stats(values)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for percent in PERCENTS:
            got = getattr(stats, f"p{percent}")
            assert math.isclose(got, cuts[percent - 1] / NS_PER_S, rel_tol=1e-12)


class TestComputeStatsSpecialInputs:
    def test_empty_input_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="zero samples"):
            compute_stats([])

    @SETTINGS
    @given(any_ns)
    def test_single_sample_gives_that_value_everywhere_and_zero_stdev(self, value: int) -> None:
        stats = compute_stats([value])
        v = float(Fraction(value, NS_PER_S))
        assert (stats.min, stats.mean, stats.median, stats.max, stats.total) == (v, v, v, v, v)
        assert (stats.p90, stats.p95, stats.p99) == (v, v, v)
        assert stats.stdev == 0.0
        assert stats.count == 1

    @SETTINGS
    @given(any_ns, st.integers(min_value=2, max_value=500))
    def test_identical_samples_have_zero_stdev_and_flat_percentiles(
        self, value: int, count: int
    ) -> None:
        stats = compute_stats([value] * count)
        v = float(Fraction(value, NS_PER_S))
        assert stats.stdev == 0.0
        assert stats.min == stats.max == stats.mean == stats.median == v
        assert stats.p90 == stats.p95 == stats.p99 == v
        assert stats.total == float(Fraction(value * count, NS_PER_S))
        assert stats.count == count

    def test_two_samples_interpolate_between_them(self) -> None:
        stats = compute_stats([1_000_000_000, 2_000_000_000])
        assert stats.mean == stats.median == 1.5
        assert stats.p90 == 1.9
        assert stats.p95 == 1.95
        assert stats.p99 == 1.99
        assert math.isclose(stats.stdev, math.sqrt(0.5), rel_tol=1e-15)

    @SETTINGS
    @given(durations, st.randoms(use_true_random=False))
    def test_result_does_not_depend_on_input_order(
        self, values: list[int], rnd: random.Random
    ) -> None:
        shuffled = list(values)
        rnd.shuffle(shuffled)
        assert compute_stats(shuffled) == compute_stats(values)

    @SETTINGS
    @given(durations)
    def test_input_sequence_is_not_modified(self, values: list[int]) -> None:
        before = list(values)
        compute_stats(values)
        assert values == before
        assert compute_stats(tuple(values)) == compute_stats(values)


class TestTimeStatsInvariants:
    @SETTINGS
    @given(durations)
    def test_percentiles_are_ordered_between_min_and_max(self, values: list[int]) -> None:
        s = compute_stats(values)
        assert s.min <= s.p90 <= s.p95 <= s.p99 <= s.max

    @SETTINGS
    @given(durations)
    def test_median_and_mean_lie_between_min_and_max(self, values: list[int]) -> None:
        s = compute_stats(values)
        assert s.min <= s.median <= s.max
        assert s.min <= s.mean <= s.max
        assert s.stdev >= 0.0
        assert s.total >= s.max

    @SETTINGS
    @given(durations)
    def test_str_has_the_seed_format_with_five_decimals(self, values: list[int]) -> None:
        s = compute_stats(values)
        text = str(s)
        number = r"(\d+\.\d{5})"
        match = re.fullmatch(
            rf"min: {number} mean: {number} median: {number} max: {number} stdev: {number}",
            text,
        )
        assert match is not None, text
        assert match.groups() == tuple(
            f"{v:.5f}" for v in (s.min, s.mean, s.median, s.max, s.stdev)
        )

    def test_str_of_known_values(self) -> None:
        s = compute_stats([1_000_000_000, 2_000_000_000, 4_000_000_000])
        assert str(s) == "min: 1.00000 mean: 2.33333 median: 2.00000 max: 4.00000 stdev: 1.52753"

    @pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TimeStats)])
    def test_time_stats_is_frozen(self, field: str) -> None:
        s = compute_stats([1, 2, 3])
        before = getattr(s, field)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(s, field, 0)
        assert getattr(s, field) == before

    def test_to_dict_has_every_field(self) -> None:
        s = compute_stats([1, 2, 3])
        assert s.to_dict() == {f.name: getattr(s, f.name) for f in dataclasses.fields(TimeStats)}
