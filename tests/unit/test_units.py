"""The units every message and file shares: ``16G``, ``1h30m``, ``12 min``, ``2 GPUs``."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgpu.units import format_duration, format_minutes, format_size, gpus_text, parse_duration, parse_size, plural

G = 1024**3


def test_gpus_are_counted_in_words_never_gpu_s():
    assert [gpus_text(n) for n in (0, 1, 2)] == ["0 GPUs", "1 GPU", "2 GPUs"]
    assert gpus_text(2, "A100") == "2 A100 GPUs" and gpus_text(1, "A100") == "1 A100 GPU"


def test_plural_counts_any_word():
    assert plural(1, "request") == "1 request" and plural(3, "request") == "3 requests"
    assert plural(2, "entry", "entries") == "2 entries"


@pytest.mark.parametrize(
    "seconds, text", [(0, "0 min"), (29, "0 min"), (600, "10 min"), (3600, "1 h"), (3900, "1 h 05 min")]
)
def test_spans_in_messages_are_to_the_minute(seconds, text):
    assert format_minutes(seconds) == text


def test_huge_sizes_are_exact():
    assert parse_size(f"{2**60 + 1}G") == (2**60 + 1) * G


def test_unlimited_durations_read_and_print_as_unlimited():
    assert parse_duration("unlimited") == math.inf and format_duration(math.inf) == "unlimited"


@given(st.integers(min_value=0, max_value=2**62))
def test_sizes_print_as_admins_write_them_and_read_back_close(size):
    back = parse_size(format_size(size))
    assert abs(back - size) <= size * 0.05 + 1


@given(st.integers(min_value=0, max_value=10**9))
def test_whole_seconds_print_and_read_back_exactly(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=12))
def test_anything_typed_is_a_size_or_a_clear_error(text):
    try:
        assert parse_size(text) >= 0
    except ValueError as error:
        assert "must be a size like" in str(error)
