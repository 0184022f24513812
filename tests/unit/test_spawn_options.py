"""The spawn page and user_options: users are offered and granted only what their quota allows,
and refused with a message naming the limit."""

from __future__ import annotations

import re
import textwrap
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgpu.quota import load_policy_text, resolve
from labgpu.quota.spawn_options import (
    SpawnOptionsError,
    options_form,
    parse_form,
    validate_user_options,
)

G = 1024**3
POLICY = load_policy_text(
    textwrap.dedent(
        """
        images:
          pytorch: {image: "labgpu/workspace:local", display: "PyTorch 2.x (CUDA 12)"}
          tf: {image: "lab/tf:2", display: "TensorFlow <2.17> & friends"}
          jax: {image: "lab/jax:1"}
        defaults: {gpus: 0, memory: 16G, cpus: 4, shm: 2G, images: [pytorch], idle_timeout: 2h}
        groups:
          vision:
            members: [alice]
            gpus: 2
            gpus_total: 3
            memory: {limit: 64G, guarantee: 32G}
            cpus: 16
            images: [pytorch, tf]
            models: [A100, H100]
        users:
          demo: {memory: 4G}
        gpus:
          models:
            A100: {match: A100, display: "NVIDIA A100"}
            H100: {match: H100}
            L40S: {match: L40S}
        """
    ),
    "quotas.yaml",
)
ALICE = resolve(POLICY, "alice")
DEMO = resolve(POLICY, "demo")


class _Selects(HTMLParser):
    """The <select> fields of a form: name -> [(value, label, selected)]."""

    def __init__(self, html: str):
        super().__init__()
        self.fields: dict[str, list[tuple[str, str, bool]]] = {}
        self._select: str | None = None
        self._option: tuple[str, bool] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self._select = attrs["name"]
            self.fields[self._select] = []
        elif tag == "option":
            self._option = (attrs["value"], "selected" in attrs)

    def handle_data(self, data):
        if self._option and self._select:
            value, selected = self._option
            self.fields[self._select].append((value, data, selected))
            self._option = None


def values(html: str, name: str) -> list[str]:
    return [v for v, _, _ in _Selects(html).fields.get(name, [])]


def selected(html: str, name: str) -> str:
    return next(v for v, _, s in _Selects(html).fields[name] if s)


# --- the form --------------------------------------------------------------------------------


def test_form_offers_gpu_counts_up_to_the_limit_and_only_allowed_images():
    html = options_form(ALICE)
    assert values(html, "gpus") == ["0", "1", "2"]
    assert values(html, "image") == ["pytorch", "tf"]
    labels = [label for _, label, _ in _Selects(html).fields["image"]]
    assert labels == ["PyTorch 2.x (CUDA 12)", "TensorFlow <2.17> & friends"]  # escaped, shown as written
    assert "<2.17>" not in html
    assert values(html, "memory")[0] == "64G"
    assert values(html, "gpu_model") == ["any", "A100", "H100"]


def test_form_counts_gpus_held_by_the_users_other_servers():
    html = options_form(ALICE, gpus_in_use_by_user=2)
    assert values(html, "gpus") == ["0", "1"]
    assert "Your other servers hold 2 GPUs of your 3 GPUs" in html


def test_demo_user_is_offered_no_gpus_and_told_the_limits():
    html = options_form(DEMO)
    assert values(html, "gpus") == ["0"]
    assert "gpu_model" not in _Selects(html).fields
    # No GPUs: nothing is reclaimed, so no idle or runtime limit is promised.
    assert "Your limits: no GPUs; 4G memory; 4 CPUs; 2G /dev/shm." in html


def test_form_preselects_previous_choices_only_while_still_allowed():
    html = options_form(ALICE, previous={"gpus": 2, "image": "tf", "memory": "16G"})
    assert (selected(html, "gpus"), selected(html, "image"), selected(html, "memory")) == ("2", "tf", "16G")
    html = options_form(ALICE, previous={"gpus": 5, "image": "jax", "memory": "1T"})
    assert (selected(html, "gpus"), selected(html, "image"), selected(html, "memory")) == ("0", "pytorch", "64G")


# --- validation ------------------------------------------------------------------------------


def test_form_submission_becomes_a_request_within_limits():
    form = {"gpus": ["2"], "image": ["tf"], "memory": ["32G"], "gpu_model": ["A100"], "_xsrf": ["token"]}
    request = validate_user_options(ALICE, parse_form(form), gpus_in_use_by_user=1)
    assert (request.gpus, request.image, request.memory, request.gpu_model) == (2, "lab/tf:2", 32 * G, "A100")
    assert request.memory_guarantee == 32 * G and request.cpus == 16 and request.shm == 2 * G
    assert request.idle_timeout == 7200


def test_no_options_means_no_gpus_the_default_image_and_the_memory_limit():
    request = validate_user_options(DEMO, None, gpus_in_use_by_user=0)
    assert (request.gpus, request.image_name, request.image, request.memory) == (
        0,
        "pytorch",
        "labgpu/workspace:local",
        4 * G,
    )


def test_json_api_values_are_accepted_as_json_types():
    request = validate_user_options(ALICE, {"gpus": 1, "memory": 8 * G, "cpus": 2.5}, gpus_in_use_by_user=0)
    assert (request.gpus, request.memory, request.cpus) == (1, 8 * G, 2.5)


def test_request_round_trips_through_saved_user_options():
    request = validate_user_options(ALICE, {"gpus": "1", "image": "tf", "memory": "24G"}, gpus_in_use_by_user=0)
    again = validate_user_options(ALICE, request.as_user_options(), gpus_in_use_by_user=0)
    assert again == request


@pytest.mark.parametrize(
    "options, in_use, message",
    [
        ({"gpus": 3}, 0, "You asked for 3 GPUs, but your limit is 2 GPUs per server (set by groups.vision)."),
        (
            {"gpus": 2},
            2,
            "your other running servers already hold 2 GPUs of your total of 3 GPUs (set by groups.vision). "
            "Ask for at most 1",
        ),
        ({"gpus": -1}, 0, "ask for 0 or more"),
        ({"gpus": True}, 0, "Option 'gpus' must be a whole number"),
        ({"gpus": "two"}, 0, "Option 'gpus' must be a whole number"),
        ({"gpus": 1.5}, 0, "Option 'gpus' must be a whole number"),
        ({"image": "jax"}, 0, "Image 'jax' is not one you may use. Allowed images: pytorch, tf."),
        ({"image": "evil/miner:latest"}, 0, "Allowed images: pytorch, tf."),
        ({"memory": "65G"}, 0, "You asked for 65G of memory, but your limit is 64G (set by groups.vision)."),
        ({"memory": "100M"}, 0, "ask for at least 512M"),
        ({"memory": "lots"}, 0, "Option 'memory' must be a size like"),
        ({"cpus": 17}, 0, "You asked for 17 CPUs, but your limit is 16 (set by groups.vision)."),
        ({"cpus": "nan"}, 0, "must be a finite number"),
        ({"cpus": 0}, 0, "ask for more than 0"),
        # Below Docker's smallest CPU limit the quota rounds to 0: no limit at all (issue 12 item 4).
        ({"cpus": 1e-6}, 0, "You asked for 1e-06 CPUs; ask for at least 0.01 (the smallest CPU limit Docker has)."),
        ({"cpus": 1e-300}, 0, "ask for at least 0.01"),
        ({"cpus": "0.009"}, 0, "ask for at least 0.01"),
        ({"cpus": 10**400}, 0, "Option 'cpus' must be a finite number"),
        ({"gpus": 10**400}, 0, "Option 'gpus' must be a whole number, not a number that large."),
        ({"memory": "1" * 400 + ".5G"}, 0, "Option 'memory' must be a size like 16G"),
        ({"memory": "9" * 5000}, 0, "Option 'memory' must be a size like 16G"),
        ({"gpu_model": "L40S"}, 0, "GPU model 'L40S' is not one you may use. Allowed models: A100, H100."),
        (
            {"privileged": True},
            0,
            "Unknown spawn option 'privileged'. Allowed options: gpus, image, memory, cpus, gpu_model, group.",
        ),
        ({"gpus": [1, 2]}, 0, "Option 'gpus' must be a single value"),
        # Over REST a list is never an option's value (a form's fields are made single by parse_form).
        ({"gpus": [1]}, 0, "Option 'gpus' must be a single value, not list [1]."),
        ({"memory": ["1G"]}, 0, "Option 'memory' must be a single value, not list ['1G']."),
    ],
)
def test_over_quota_or_unknown_values_are_refused_naming_the_limit(options, in_use, message):
    with pytest.raises(SpawnOptionsError) as info:
        validate_user_options(ALICE, options, gpus_in_use_by_user=in_use)
    assert message in str(info.value)


def test_thousands_of_unknown_options_make_a_short_message():
    with pytest.raises(SpawnOptionsError) as info:
        validate_user_options(ALICE, {f"key{i}": i for i in range(2000)}, gpus_in_use_by_user=0)
    assert str(info.value) == (
        "Unknown spawn options 'key0', 'key1', 'key10', 'key100', 'key1000' and 1995 more. "
        "Allowed options: gpus, image, memory, cpus, gpu_model, group."
    )
    with pytest.raises(SpawnOptionsError) as info:
        validate_user_options(ALICE, {"x" * 1_000_000: 1}, gpus_in_use_by_user=0)
    assert len(str(info.value)) < 200


def test_a_stale_saved_choice_is_revalidated_after_the_quota_shrinks():
    shrunk = load_policy_text("defaults: {gpus: 1}\n")
    with pytest.raises(SpawnOptionsError, match="your limit is 1 GPU per server"):
        validate_user_options(resolve(shrunk, "alice"), {"gpus": 2}, gpus_in_use_by_user=0)


def test_a_model_name_is_checked_against_the_hubs_models_when_any_model_is_allowed():
    anyone = resolve(POLICY, "bob")
    assert validate_user_options(anyone, {"gpu_model": "L40S"}, gpus_in_use_by_user=0).gpu_model == "L40S"
    with pytest.raises(SpawnOptionsError, match=r"unknown on this hub\. Known models: A100, H100, L40S"):
        validate_user_options(anyone, {"gpu_model": "V100"}, gpus_in_use_by_user=0)


def test_parse_form_refuses_repeated_fields_and_drops_empty_ones():
    assert parse_form({"gpus": ["1"], "memory": [""], "_xsrf": ["t"]}) == {"gpus": "1"}
    with pytest.raises(SpawnOptionsError, match="sent 2 values for 'gpus'"):
        parse_form({"gpus": ["1", "2"]})


# --- properties ------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.integers(min_value=10**300, max_value=10**400),
        st.text(max_size=12),
        st.sampled_from(["1", "2", "64G", "65G", "tf", "jax", "pytorch", "A100", "any", "16", " 3 ", "1e3"]),
    ),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
    max_leaves=8,
)
option_dicts = st.dictionaries(
    st.one_of(st.sampled_from(["gpus", "image", "memory", "cpus", "gpu_model"]), st.text(max_size=8)),
    json_values,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(option_dicts, st.integers(min_value=0, max_value=5))
def test_any_options_are_granted_within_limits_or_refused_with_a_message(options, in_use):
    try:
        request = validate_user_options(ALICE, options, gpus_in_use_by_user=in_use)
    except SpawnOptionsError as e:
        assert str(e) and "\n" not in str(e) and "Traceback" not in str(e)
        return
    assert 0 <= request.gpus <= ALICE.gpus and (request.gpus == 0 or request.gpus + in_use <= ALICE.gpus_total)
    assert request.image in {c.image for c in ALICE.images}
    assert 0 < request.memory <= ALICE.memory and 0.01 <= request.cpus <= ALICE.cpus
    assert request.gpu_model is None or request.gpu_model in ALICE.models


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.lists(st.text(max_size=10), max_size=2), max_size=6))
def test_any_form_post_parses_or_is_refused_with_a_message(formdata):
    try:
        options = parse_form(formdata)
        validate_user_options(DEMO, options, gpus_in_use_by_user=0)
    except SpawnOptionsError as e:
        assert re.search(r"\w", str(e))


def test_gpu_users_are_told_when_idle_gpus_are_taken_back():
    html = options_form(ALICE)
    assert "a GPU server whose GPUs sit idle for" in html
