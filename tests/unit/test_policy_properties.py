"""Property tests: whatever an admin types into a quota file, the loader answers with a policy
or with clear file:line:col errors; it never crashes, and resolved limits are consistent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgpu.quota import PolicyError, load_policy_text, resolve
from labgpu.quota.reader import NeedsDetail, read_fast, read_located

EXAMPLE = (Path(__file__).resolve().parents[2] / "quotas" / "quotas.yaml").read_text()
ERROR_LINE = re.compile(r"^q\.yaml:\d+:\d+: \S.*$")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = [
    "gpus",
    "gpus_total",
    "models",
    "memory",
    "cpus",
    "shm",
    "pids",
    "images",
    "named_servers",
    "idle_timeout",
    "max_runtime",
    "share",
    "members",
    "pool",
    "shared_volume",
    "limit",
    "guarantee",
]
scalars = st.one_of(
    st.integers(min_value=-5, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(
        ["16G", "512Mi", "2h", "30m", "unlimited", "any", "pytorch", "A100", "-1G", "lots", "", "GPU-1", "1e3"]
    ),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from([*FIELDS, "pytorch", "alice", "lab", "x"]), children, max_size=4),
    ),
    max_leaves=20,
)
entries = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
policies = st.fixed_dictionaries(
    {},
    optional={
        "images": st.dictionaries(
            st.sampled_from(["pytorch", "tf", "Bad"]),
            st.one_of(values, st.fixed_dictionaries({"image": st.text(max_size=10)})),
        ),
        "defaults": st.one_of(entries, values),
        "groups": st.dictionaries(
            st.sampled_from(["lab", "students", "bad name"]), st.one_of(entries, values), max_size=3
        ),
        "users": st.dictionaries(st.sampled_from(["alice", "bob", "demo"]), st.one_of(entries, values), max_size=3),
        "gpus": values,
        "fairshare": values,
        "extra": values,
    },
)


def _check(text: str) -> None:
    try:
        policy = load_policy_text(text, "q.yaml")
    except PolicyError as e:
        assert e.errors, "an invalid file must say why"
        for line in e.errors:
            assert ERROR_LINE.match(line), line
            assert "Traceback" not in line and "\n" not in line
        return
    for user, groups in (("alice", []), ("bob", ["lab", "students"]), ("demo", ["nope"])):
        limits = resolve(policy, user, groups)
        assert limits.gpus_total >= limits.gpus >= 0
        assert limits.memory_guarantee is None or limits.memory_guarantee <= limits.memory
        assert limits.default_image is None or limits.image(limits.default_image)


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_gives_a_policy_or_clear_errors(text):
    _check(text)


@SETTINGS
@given(policies, st.sampled_from(["json", "block", "flow"]))
def test_any_structure_gives_a_policy_or_clear_errors(data, style):
    if style == "json":
        text = json.dumps(data, allow_nan=True)
    else:
        text = yaml.safe_dump(data, default_flow_style=(style == "flow"), allow_unicode=True)
    _check(text)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(EXAMPLE) - 1), st.text(max_size=6), st.integers(min_value=0, max_value=6))
def test_edits_of_the_shipped_example_never_crash(position, inserted, deleted):
    _check(EXAMPLE[:position] + inserted + EXAMPLE[position + deleted :])


@SETTINGS
@given(policies, st.sampled_from(["block", "flow"]))
def test_libyaml_and_ruamel_yaml_read_the_same_data(data, style):
    # The hub reads with libyaml when it can and explains errors with ruamel.yaml's positions:
    # a file must mean the same to both.
    text = yaml.safe_dump(data, default_flow_style=(style == "flow"), allow_unicode=True)
    assert read_fast(text) == read_located(text, "q.yaml").data


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.text(alphabet="[]{}&*<:!,- \nab1", max_size=60)))
def test_whatever_the_fast_path_reads_the_path_with_positions_reads_the_same(text):
    try:
        fast = read_fast(text)
    except NeedsDetail:
        return
    assert read_located(text, "q.yaml").data == fast
