"""Generate the two example demand traces (seeded, so the committed files are reproducible):

    python benchmarks/traces/make_traces.py            # writes calm-week.jsonl, deadline-week.jsonl
    python benchmarks/traces/make_traces.py --seed 7 --out /tmp/traces

A lab of 12 people in 3 groups sharing 8 GPUs for one week (t=0 is Monday 00:00). Three
heavy users run multi-GPU training sessions: busy for hours, idle between runs (reading
results, meetings, nights) and left idle at the end. Nine light users open short interactive
sessions during working hours and leave a tab open for a while afterwards. The deadline week
has 3x the calm week's sessions per person; the heavy users submit theirs early in the week,
the light users' arrivals ramp up toward Friday's deadline.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from labgpu.fairshare.trace import dump_trace

GROUPS = {"vision": {"share": 1, "pool": 6}, "nlp": {"share": 1, "pool": 6}, "robotics": {"share": 1, "pool": 4}}
HEAVY = {"ava": "vision", "eli": "nlp", "ivan": "robotics"}
LIGHT = {
    "ben": "vision",
    "cara": "vision",
    "dev": "vision",
    "fay": "nlp",
    "gus": "nlp",
    "hana": "nlp",
    "jo": "robotics",
    "kim": "robotics",
    "leo": "robotics",
}
POLICY = {
    "idle_timeout_h": 1.0,
    "max_runtime_h": 24.0,
    "warn_before_h": 0.25,
    "reclaim_only_when_waiting": True,
    "idle_threshold": 0.05,
}
CALM_HEAVY_SESSIONS = 2  # per heavy user per week
CALM_LIGHT_SESSIONS = 3  # per light user per week (on average)


def working_time(rng: random.Random, days: tuple[int, ...], weights: tuple[float, ...] | None = None) -> float:
    """A time (hours since Monday 00:00) in working hours (9-19) of one of ``days``."""
    day = rng.choices(days, weights=weights)[0]
    return round(day * 24 + rng.uniform(9.0, 19.0), 3)


def heavy_session(rng: random.Random, user: str) -> dict:
    """Training: 2-4 busy runs of 2-8 h, idle 1.5-10 h between, then left idle 3-12 h."""
    gpus = 2 if user == "ivan" else rng.choice([2, 3, 4, 4])
    phases: list[list] = []
    for run in range(rng.randint(2, 4)):
        if run:
            phases.append(["idle", round(rng.uniform(1.5, 10.0), 3)])
        phases.append(["busy", round(rng.uniform(2.0, 8.0), 3)])
    phases.append(["idle", round(rng.uniform(3.0, 12.0), 3)])
    return {"user": user, "gpus": gpus, "phases": phases}


def light_session(rng: random.Random, user: str) -> dict:
    """Interactive: 0.5-2.5 h of work, maybe a break and more work, then a tab left open."""
    gpus = 1 if rng.random() < 0.85 else 2
    phases: list[list] = [["busy", round(rng.uniform(0.5, 2.5), 3)]]
    if rng.random() < 0.5:
        phases.append(["idle", round(rng.uniform(0.3, 1.5), 3)])
        phases.append(["busy", round(rng.uniform(0.5, 2.0), 3)])
    phases.append(["idle", round(rng.uniform(0.2, 2.0), 3)])
    return {"user": user, "gpus": gpus, "phases": phases}


def make_trace(name: str, seed: int, scale: int) -> str:
    """One week's trace; ``scale`` multiplies every user's number of sessions."""
    rng = random.Random(f"{name}:{seed}")
    deadline = scale > 1
    sessions: list[dict] = []
    for user in HEAVY:
        for _ in range(CALM_HEAVY_SESSIONS * scale):
            # Deadline week: everything is queued Monday to Wednesday morning.
            at = working_time(rng, (0, 1, 2), (0.5, 0.35, 0.15)) if deadline else working_time(rng, (0, 1, 2, 3, 4))
            sessions.append({"at_h": at, **heavy_session(rng, user)})
    for user in LIGHT:
        count = sum(1 for _ in range(CALM_LIGHT_SESSIONS * scale * 2) if rng.random() < 0.5)
        weights = (1.0, 1.0, 1.2, 1.5, 1.8) if deadline else (1.0, 1.0, 1.0, 1.0, 1.0)
        for _ in range(count):
            sessions.append({"at_h": working_time(rng, (0, 1, 2, 3, 4), weights), **light_session(rng, user)})
    sessions.sort(key=lambda s: (s["at_h"], s["user"]))
    for number, session in enumerate(sessions, start=1):
        session["id"] = f"{name}-{number:03d}"
    users = {u: {"group": g, "share": 1, "max_gpus": 4, "kind": "heavy"} for u, g in HEAVY.items()}
    users |= {u: {"group": g, "share": 1, "max_gpus": 4, "kind": "light"} for u, g in LIGHT.items()}
    header = {
        "name": name,
        "gpus": 8,
        "horizon_h": 168,
        "half_life_h": 168,
        "groups": GROUPS,
        "users": users,
        "policy": POLICY,
        "seed": seed,
        "scale": scale,
    }
    return dump_trace(header, sessions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026, help="random seed (default 2026, the committed traces)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, scale in (("calm-week", 1), ("deadline-week", 3)):
        path = args.out / f"{name}.jsonl"
        path.write_text(make_trace(name, args.seed, scale))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
