"""The spawn page and ``user_options``: offer only what a user's :class:`Limits` allow, and
hold every request (form, REST API, hand-crafted, or a stale saved choice) to them.

Pure: no tornado, no Docker. Nothing is silently clamped: an over-quota or unknown value is
refused with :class:`SpawnOptionsError`, whose message names the limit (the spawner turns it
into HTTP 400).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labgpu.quota.limits import Limits
from labgpu.units import format_duration, format_size, gpus_text, parse_size

# Options a request may carry; anything else is refused.
OPTION_KEYS = ("gpus", "image", "memory", "cpus", "gpu_model", "group")
# Written by the hub beside a server's options, never read: "profile" is what JupyterHub 6's admin
# page shows in its Profile column (GPUs, memory, image; SpawnRequest.profile), so it comes back
# with a saved choice and is ignored.
DERIVED_KEYS = ("profile",)
# The smallest memory limit a user may ask for: below it JupyterLab itself is OOM-killed.
MIN_MEMORY = 512 * 1024**2
# The smallest CPU limit: Docker's (a 1 ms quota per 100 ms period). Below it the quota rounds to
# 0, which Docker takes as no limit at all.
MIN_CPUS = 0.01
ANY_MODEL = "any"


class SpawnOptionsError(ValueError):
    """A spawn request the policy does not allow; the message is for the user, as is."""


@dataclass(frozen=True)
class SpawnRequest:
    """A request that fits the user's limits: what the spawner builds the container from."""

    gpus: int
    image_name: str | None  # None: the spawner's configured image (the policy lists none)
    image: str | None  # Docker reference
    memory: int  # bytes, hard limit
    memory_guarantee: int | None
    cpus: float
    shm: int
    pids: int
    gpu_model: str | None  # None: any model the user is allowed
    idle_timeout: int | None
    max_runtime: int | None
    group: str | None = None  # the group this server is charged to (its pool, fair share, usage)

    @property
    def profile(self) -> str:
        """``2 GPUs · 16G · pytorch``: the admin page's Profile column (user_options["profile"])."""
        return " · ".join(
            [gpus_text(self.gpus), format_size(self.memory), self.image_name or self.image or "default image"]
        )

    def as_user_options(self) -> dict[str, Any]:
        """JSON-able options that, validated again, give this same request (to persist)."""
        options: dict[str, Any] = {"gpus": self.gpus, "memory": format_size(self.memory), "cpus": self.cpus}
        if self.image_name is not None:
            options["image"] = self.image_name
        if self.gpu_model is not None:
            options["gpu_model"] = self.gpu_model
        if self.group is not None:
            options["group"] = self.group
        return options


def _from(limits: Limits, name: str) -> str:
    source = limits.sources.get(name)
    return f" (set by {source})" if source else ""


def _single(name: str, value: Any) -> Any:
    """One value per option, as JSON sends it: never a list or an object (a form's lists of
    strings are made single by :func:`parse_form` before they get here)."""
    if isinstance(value, (list, tuple, dict)):
        shown = repr(value) if len(value) <= 8 else f"of {len(value)} items"
        raise SpawnOptionsError(f"Option {name!r} must be a single value, not {type(value).__name__} {shown:.60}.")
    if isinstance(value, str):
        value = value.strip()
    return value


def _whole_number(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise SpawnOptionsError(f"Option {name!r} must be a whole number, not {value!r}.")
    if isinstance(value, int):
        if value.bit_length() > 32:  # JSON allows 4,300 digits; a message should not quote them
            raise SpawnOptionsError(f"Option {name!r} must be a whole number, not a number that large.")
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**32:
        return int(value)
    if isinstance(value, str) and value.isascii() and value.lstrip("+-").isdigit() and len(value) < 10:
        return int(value)
    raise SpawnOptionsError(f"Option {name!r} must be a whole number, not {value!r:.60}.")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpawnOptionsError(f"Option {name!r} must be a number, not {value!r}.")
    if isinstance(value, int) and value.bit_length() > 64:
        raise SpawnOptionsError(f"Option {name!r} must be a finite number, not a number that large.")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and len(value) < 32:
        try:
            number = float(value)
        except ValueError:
            raise SpawnOptionsError(f"Option {name!r} must be a number, not {value!r}.") from None
    else:
        raise SpawnOptionsError(f"Option {name!r} must be a number, not {value!r:.60}.")
    if not math.isfinite(number):
        raise SpawnOptionsError(f"Option {name!r} must be a finite number, not {value!r}.")
    return number


def validate_user_options(
    limits: Limits, options: Mapping[str, Any] | None, *, gpus_in_use_by_user: int
) -> SpawnRequest:
    """Check ``options`` (form or JSON) against ``limits``; ``gpus_in_use_by_user`` counts the
    GPUs held by the user's *other* running servers. Raises SpawnOptionsError naming the limit."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise SpawnOptionsError(
            f"Spawn options must be a JSON object of {', '.join(OPTION_KEYS)}, not {type(options).__name__}."
        )
    options = {k: v for k, v in options.items() if k not in DERIVED_KEYS}
    unknown = sorted(str(k)[:40] for k in options if k not in OPTION_KEYS)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SpawnOptionsError(
            f"Unknown spawn option{'s' if len(unknown) > 1 else ''} {shown}. Allowed options: {', '.join(OPTION_KEYS)}."
        )
    values = {k: _single(k, v) for k, v in options.items()}
    values = {k: v for k, v in values.items() if v not in (None, "")}

    gpus = _whole_number("gpus", values.get("gpus", 0))
    if gpus < 0:
        raise SpawnOptionsError(f"You asked for {gpus} GPUs; ask for 0 or more.")
    if gpus > limits.gpus:
        raise SpawnOptionsError(
            f"You asked for {gpus_text(gpus)}, but your limit is {gpus_text(limits.gpus)} per server"
            f"{_from(limits, 'gpus')}."
        )
    in_use = max(0, int(gpus_in_use_by_user))
    if gpus and gpus + in_use > limits.gpus_total:
        left = max(0, limits.gpus_total - in_use)
        raise SpawnOptionsError(
            f"You asked for {gpus_text(gpus)}, but your other running servers already hold {gpus_text(in_use)} "
            f"of your total of {gpus_text(limits.gpus_total)}{_from(limits, 'gpus_total')}. "
            f"Ask for at most {left}, or stop another server first."
        )

    image_name: str | None = None
    image_ref: str | None = None
    if limits.images:
        requested = values.get("image", limits.default_image)
        if not isinstance(requested, str):
            raise SpawnOptionsError(f"Option 'image' must be an image name, not {requested!r:.60}.")
        choice = limits.image(requested)
        if choice is None:
            allowed = ", ".join(c.name for c in limits.images)
            raise SpawnOptionsError(f"Image {requested[:100]!r} is not one you may use. Allowed images: {allowed}.")
        image_name, image_ref = choice.name, choice.image
    elif "image" in values:
        raise SpawnOptionsError("This hub offers no choice of image; leave out the 'image' option.")

    memory = limits.memory
    if "memory" in values:
        raw = values["memory"]
        try:
            memory = parse_size(raw)
        except (ValueError, OverflowError) as e:
            raise SpawnOptionsError(f"Option 'memory' {e}.") from None
        if memory > limits.memory:
            raise SpawnOptionsError(
                f"You asked for {format_size(memory)} of memory, but your limit is "
                f"{format_size(limits.memory)}{_from(limits, 'memory')}."
            )
        if memory < MIN_MEMORY:
            raise SpawnOptionsError(
                f"You asked for {format_size(memory)} of memory; ask for at least {format_size(MIN_MEMORY)} "
                "(JupyterLab itself needs that much)."
            )
    guarantee = limits.memory_guarantee
    if guarantee is not None and guarantee > memory:
        guarantee = memory  # a guarantee cannot exceed what the user asked to be limited to

    cpus = limits.cpus
    if "cpus" in values:
        cpus = _number("cpus", values["cpus"])
        if cpus <= 0:
            raise SpawnOptionsError(f"You asked for {cpus:g} CPUs; ask for more than 0.")
        if cpus < MIN_CPUS:
            raise SpawnOptionsError(
                f"You asked for {cpus:g} CPUs; ask for at least {MIN_CPUS:g} (the smallest CPU limit Docker has)."
            )
        if cpus > limits.cpus:
            raise SpawnOptionsError(
                f"You asked for {cpus:g} CPUs, but your limit is {limits.cpus:g}{_from(limits, 'cpus')}."
            )

    gpu_model: str | None = None
    model = values.get("gpu_model")
    if model is not None and model != ANY_MODEL:
        if not isinstance(model, str):
            raise SpawnOptionsError(f"Option 'gpu_model' must be a model name, not {model!r:.60}.")
        if limits.models is not None and model not in limits.models:
            allowed = ", ".join(limits.models) or "none"
            raise SpawnOptionsError(f"GPU model {model[:60]!r} is not one you may use. Allowed models: {allowed}.")
        if limits.models is None and model not in limits.known_models:
            allowed = ", ".join(limits.known_models) or "any (this hub names no models)"
            raise SpawnOptionsError(f"GPU model {model[:60]!r} is unknown on this hub. Known models: {allowed}.")
        gpu_model = model

    return SpawnRequest(
        group=charged_group(limits, values.get("group")),
        gpus=gpus,
        image_name=image_name,
        image=image_ref,
        memory=memory,
        memory_guarantee=guarantee,
        cpus=cpus,
        shm=limits.shm,
        pids=limits.pids,
        gpu_model=gpu_model,
        idle_timeout=limits.idle_timeout,
        max_runtime=limits.max_runtime,
    )


def default_group(limits: Limits) -> str | None:
    """The group a server is charged to when its owner does not choose: the first of the user's
    groups with a GPU pool, else their first group, else none."""
    return next((g for g in limits.groups if g in limits.pools), limits.groups[0] if limits.groups else None)


def charged_group(limits: Limits, requested: Any) -> str | None:
    """The group a server draws on: ``requested`` (the ``group`` option) if it is one of the
    user's groups, else :func:`default_group`. Its pool, fair share and usage are charged."""
    if requested is None:
        return default_group(limits)
    if not isinstance(requested, str):
        raise SpawnOptionsError(f"Option 'group' must be a group name, not {requested!r:.60}.")
    if requested not in limits.groups:
        mine = ", ".join(limits.groups) or "none (you are in no group of the quota files)"
        raise SpawnOptionsError(
            f"You are not in group {requested[:100]!r}, so your server cannot be charged to it. Your groups: {mine}."
        )
    return requested


def parse_form(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """The spawn form's fields (``{name: [value, ...]}`` as tornado gives them) as options.

    Keeps unknown fields, so that :func:`validate_user_options` refuses them; drops the
    XSRF token and empty fields (an empty field means "my limit" / "the default").
    """
    options: dict[str, str] = {}
    for name, values in formdata.items():
        if name == "_xsrf":
            continue
        if isinstance(values, (list, tuple)):
            if len(values) != 1:
                if not values:
                    continue
                raise SpawnOptionsError(f"The form sent {len(values)} values for {name!r}; send one.")
            value = values[0]
        else:
            value = values
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        value = str(value).strip()
        if value:
            options[name] = value
    return options


def memory_choices(limit: int) -> list[int]:
    """Memory sizes offered in the form: the limit, then halvings down to 1G (at least 512M)."""
    choices = [limit]
    size = limit
    while size // 2 >= max(MIN_MEMORY, 1024**3) and len(choices) < 8:
        size //= 2
        choices.append(size)
    return choices


def _limits_note(limits: Limits, gpus_in_use_by_user: int) -> str:
    parts = []
    if limits.gpus:
        total = f", {limits.gpus_total} in total" if limits.gpus_total != limits.gpus else ""
        held = f" ({gpus_in_use_by_user} held by your other servers)" if gpus_in_use_by_user else ""
        parts.append(f"up to {gpus_text(limits.gpus)} per server{total}{held}")
    else:
        parts.append("no GPUs")
    parts.append(f"{format_size(limits.memory)} memory")
    parts.append(f"{limits.cpus:g} CPU{'' if limits.cpus == 1 else 's'}")
    parts.append(f"{format_size(limits.shm)} /dev/shm")
    # The reclaimer takes back GPUs (it stops GPU servers); servers without GPUs are left alone.
    if limits.gpus and limits.idle_timeout is not None:
        parts.append(f"a GPU server whose GPUs sit idle for {format_duration(limits.idle_timeout)} is stopped")
    if limits.gpus and limits.max_runtime is not None:
        parts.append(f"GPU servers run at most {format_duration(limits.max_runtime)}")
    return "Your limits: " + "; ".join(parts) + "."


def _group_label(limits: Limits, group: str) -> str:
    pool = limits.pools.get(group)
    return group if pool is None else f"{group} (pool of {gpus_text(pool)})"


def _image_choice(limits: Limits, previous: Mapping[str, Any], versions: Mapping[str, str | None]) -> str:
    """The image field: each image with the versions inside it; one not on this server greyed out."""
    esc = html.escape
    missing = {c.name for c in limits.images if c.name in versions and versions[c.name] is None}
    prev_image = previous.get("image") if isinstance(previous.get("image"), str) else None
    selected = prev_image if prev_image and limits.image(prev_image) else limits.default_image
    if selected in missing:
        selected = next((c.name for c in limits.images if c.name not in missing), selected)
    options = []
    for c in limits.images:
        text = versions.get(c.name)
        label = f"{c.display} (not built on this server: ask an admin)" if c.name in missing else c.display
        title = f' title="{esc(text)}"' if text else ""
        flags = (" selected" if c.name == selected else "") + (" disabled" if c.name in missing else "")
        options.append(f'<option value="{esc(c.name)}"{title}{flags}>{esc(label)}</option>')
    details = "".join(
        f"<li><b>{esc(c.display)}</b>: {esc(text)}</li>" for c in limits.images if (text := versions.get(c.name))
    )
    return (
        '<div class="form-group">'
        '<label for="labgpu-image">Image</label>'
        f'<select class="form-control" id="labgpu-image" name="image">{"".join(options)}</select>'
        + (f'<ul class="help-block labgpu-image-versions">{details}</ul>' if details else "")
        + "</div>"
    )


def options_form(
    limits: Limits,
    *,
    gpus_in_use_by_user: int = 0,
    previous: Mapping[str, Any] | None = None,
    disk_note: str = "",
    image_versions: Mapping[str, str | None] | None = None,
) -> str:
    """HTML for the spawn page offering only what ``limits`` allow (GPU count, image, memory,
    GPU model), preselecting ``previous`` choices that are still allowed; ``disk_note`` says how
    full the user's home and shared folders are (:func:`labgpu.quota.volumes.disk_note`).
    ``image_versions``: per image name, the versions inside it (``labels.image_versions_text``),
    or None for an image not on this server, offered greyed out; an image missing from the
    mapping (or no mapping) is offered as it is."""
    previous = previous or {}
    esc = html.escape
    rows: list[str] = []

    gpu_max = max(0, min(limits.gpus, limits.gpus_total - max(0, gpus_in_use_by_user)))
    try:
        prev_gpus = _whole_number("gpus", _single("gpus", previous.get("gpus", 0)))
    except SpawnOptionsError:
        prev_gpus = 0
    prev_gpus = prev_gpus if 0 <= prev_gpus <= gpu_max else 0
    gpu_options = "".join(
        f'<option value="{n}"{" selected" if n == prev_gpus else ""}>{esc(gpus_text(n))}</option>'
        for n in range(gpu_max + 1)
    )
    gpu_hint = ""
    if gpu_max < limits.gpus:
        gpu_hint = (
            f'<p class="help-block">Your other servers hold {gpus_text(gpus_in_use_by_user)} of your '
            f"{gpus_text(limits.gpus_total)}; stop one to get more here.</p>"
        )
    rows.append(
        '<div class="form-group">'
        '<label for="labgpu-gpus">GPUs</label>'
        f'<select class="form-control" id="labgpu-gpus" name="gpus">{gpu_options}</select>'
        f"{gpu_hint}</div>"
    )

    if limits.images:
        rows.append(_image_choice(limits, previous, image_versions or {}))

    try:
        prev_memory = parse_size(_single("memory", previous["memory"])) if previous.get("memory") else limits.memory
    except (ValueError, SpawnOptionsError):
        prev_memory = limits.memory
    choices = memory_choices(limits.memory)
    if prev_memory not in choices:
        prev_memory = limits.memory
    memory_options = "".join(
        f'<option value="{esc(format_size(m))}"{" selected" if m == prev_memory else ""}>{esc(format_size(m))}</option>'
        for m in choices
    )
    rows.append(
        '<div class="form-group">'
        '<label for="labgpu-memory">Memory</label>'
        f'<select class="form-control" id="labgpu-memory" name="memory">{memory_options}</select></div>'
    )

    models = limits.models if limits.models is not None else tuple(limits.known_models)
    if gpu_max > 0 and models and len(models) > 1:
        display = limits.known_models
        prev_model = previous.get("gpu_model")
        model_options = f'<option value="{ANY_MODEL}">Any allowed model</option>' + "".join(
            f'<option value="{esc(m)}"{" selected" if m == prev_model else ""}>{esc(display.get(m, m))}</option>'
            for m in models
        )
        rows.append(
            '<div class="form-group">'
            '<label for="labgpu-gpu-model">GPU model</label>'
            f'<select class="form-control" id="labgpu-gpu-model" name="gpu_model">{model_options}</select></div>'
        )

    if len(limits.groups) > 1:
        prev_group = previous.get("group")
        selected_group = prev_group if prev_group in limits.groups else default_group(limits)
        group_options = "".join(
            f'<option value="{esc(g)}"{" selected" if g == selected_group else ""}>{esc(label)}</option>'
            for g, label in ((g, _group_label(limits, g)) for g in limits.groups)
        )
        rows.append(
            '<div class="form-group">'
            '<label for="labgpu-group">Charged to group</label>'
            f'<select class="form-control" id="labgpu-group" name="group">{group_options}</select>'
            '<p class="help-block">The group whose GPU pool, fair share and usage this server counts against.</p>'
            "</div>"
        )

    rows.append(f'<p class="help-block labgpu-limits">{esc(_limits_note(limits, gpus_in_use_by_user))}</p>')
    if disk_note:
        rows.append(f'<p class="help-block labgpu-disk">{esc(disk_note)}</p>')
    return "\n".join(rows)
