"""The web service's pages and JSON API on a real ledger with a lab's history (tests/web_data.py),
served by the real tornado application; only the hub's OAuth is replaced by a header naming the
user (the browser tests log in through the real hub)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from labgpu.quota import PolicyStore
from labgpu.web import base
from labgpu.web.app import make_app
from labgpu.web.base import WebContext
from tests.harness import free_port
from tests.web_data import build_lab

QUOTAS = """
defaults: {gpus: 2}
groups:
  vision: {members: [user000, user001, user002], managers: [user002], pool: 3}
  nlp: {members: [user003, user004]}
pages: {show_names: group}
"""
PREFIX = "/services/labgpu/"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return build_lab(tmp_path_factory.mktemp("lab") / "ledger.sqlite", users=5, days=3, waiting=2, warned=1)


@pytest.fixture(scope="module")
def quotas(tmp_path_factory):
    path = tmp_path_factory.mktemp("quotas") / "quotas.yaml"
    path.write_text(QUOTAS)
    return path


@pytest.fixture(scope="module")
def service(lab, quotas) -> Iterator[str]:
    """The service on a free port; ``X-Test-User: name[,admin]`` logs a user in."""

    def fake_user(self):
        who = self.request.headers.get("X-Test-User")
        if not who:
            return None
        name, _, admin = who.partition(",")
        return {"name": name, "admin": admin == "admin", "groups": []}

    original = base.BaseHandler.get_current_user
    base.BaseHandler.get_current_user = fake_user
    port = free_port()
    ready = threading.Event()
    loop_box: list[IOLoop] = []

    def serve():
        asyncio.set_event_loop(asyncio.new_event_loop())
        context = WebContext(ledger_url=str(lab.path), policy_store=PolicyStore([str(quotas)]))
        server = HTTPServer(make_app(context, modules=("labgpu.web.pages",), login_url="/hub/login"))
        server.listen(port, "127.0.0.1")
        loop_box.append(IOLoop.current())
        ready.set()
        IOLoop.current().start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{port}{PREFIX}"
    loop_box[0].add_callback(loop_box[0].stop)
    thread.join(5)
    base.BaseHandler.get_current_user = original


def get(service: str, path: str, user: str | None, **kwargs) -> requests.Response:
    headers = {"X-Test-User": user} if user else {}
    return requests.get(service + path, headers=headers, timeout=30, allow_redirects=False, **kwargs)


def test_the_board_lists_every_gpu_its_holder_the_queue_and_the_warning(service, lab):
    board = get(service, "api/gpus", "admin,admin").json()
    assert [g["uuid"] for g in board["gpus"]] == lab.gpus
    holders = {f"{g['held_by']['user']}/{g['held_by']['server']}" for g in board["gpus"] if g["held_by"]}
    assert holders == set(lab.holders)
    assert board["free"] == len(lab.gpus) - len(lab.holders)
    assert board["islands"] == [["0", "1", "2", "3"]]
    assert [
        f"{q['user']}/{q['server']}" for q in sorted(board["queue"], key=lambda q: q["submitted_at"])
    ] == lab.waiting
    assert sorted(q["position"] for q in board["queue"]) == [1, 2]
    assert all("GPU" in q["waiting_for"] for q in board["queue"])
    assert [f"{w['user']}/{w['server']}" for w in board["reclaim_warnings"]] == lab.warned
    held = next(g for g in board["gpus"] if g["held_by"])
    assert held["util"] is not None and len(held["util_last_hour"]) == 60


def test_names_follow_show_names_group(service, lab):
    """pages.show_names: group — user003 (nlp) sees nlp members, not vision's; admins see all."""
    board = get(service, "api/gpus", "user003").json()
    for gpu in board["gpus"]:
        held = gpu["held_by"]
        if held is None:
            continue
        assert held["user"] in ("user003", "user004", "another user"), held
        assert (held["user"] == "another user") == (held["hidden"] is True)
    page = get(service, "gpus", "user003")
    assert page.status_code == 200
    assert "user001" not in page.text  # a vision member's name never reaches the page


def test_board_page_is_the_hubs_page_with_our_nav_and_a_sparkline(service):
    page = get(service, "gpus", "user001")
    assert page.status_code == 200
    assert "/hub/static/css/style.min.css" in page.text  # the hub's own look
    assert 'href="/services/labgpu/usage"' in page.text and 'id="labgpu-gpus"' in page.text
    assert '<svg class="labgpu-spark"' in page.text and "utilization over the last hour" in page.text
    assert "static/board.js" in page.text


def test_not_logged_in_is_sent_to_the_login(service):
    r = get(service, "gpus", None)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"]  # the hub logs in
    assert get(service, "api/usage", None).status_code in (302, 403)


def test_a_user_cannot_read_anothers_usage_or_the_lab(service):
    r = get(service, "api/usage?user=user001", "user000")
    assert r.status_code == 403 and "only your own usage" in r.json()["message"]
    assert get(service, "usage?user=user001", "user000").status_code == 403
    assert get(service, "usage.csv?user=user001", "user000").status_code == 403
    r = get(service, "api/lab", "user000")
    assert r.status_code == 403 and "admins" in r.json()["message"]
    page = get(service, "lab", "user000")
    assert page.status_code == 403 and 'id="labgpu-error"' in page.text
    assert get(service, "api/lab?group=nlp", "user002").status_code == 403  # manages vision, not nlp


def test_my_usage_equals_labgpu_usage(service, lab):
    usage = get(service, "api/usage?period=7d", "user001").json()
    cli = subprocess.run(
        [sys.executable, "-m", "labgpu.cli", "usage", "--since", "7d", "--csv", "--db", str(lab.path)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["user"]: r for r in csv.DictReader(io.StringIO(cli.stdout))}
    totals = usage["totals"]
    assert totals["gpu_hours_held"] == pytest.approx(float(rows["user001"]["gpu_h_held"]), abs=0.06)
    assert totals["gpu_hours_busy"] == pytest.approx(float(rows["user001"]["gpu_h_busy"]), abs=0.06)
    assert totals["queued"] == int(rows["user001"]["queued"])
    per_day = sum(d["gpu_hours_held"] for d in usage["per_day"])
    assert per_day == pytest.approx(totals["gpu_hours_held"], rel=1e-6)
    assert usage["sessions"] and usage["sessions"][0]["torch_version"] == "2.14.1"
    assert [n["server"] for n in usage["reclaim_notices"]] == [
        s.split("/")[1] for s in lab.warned if s.startswith("user001/")
    ]


def test_my_usage_page_has_a_chart_with_a_text_alternative_and_csv(service):
    page = get(service, "usage", "user001")
    assert page.status_code == 200
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in page.text and "<desc>" in page.text
    assert 'id="labgpu-days"' in page.text and 'id="labgpu-sessions"' in page.text
    days = get(service, "usage.csv?period=7d", "user001")
    assert days.headers["Content-Type"].startswith("text/csv")
    assert days.text.splitlines()[0] == "day,gpu_hours_held,gpu_hours_busy"
    sessions = get(service, "usage.csv?what=sessions", "user001").text.splitlines()
    assert sessions[0].startswith("server,started_at,ended_at,image,image_digest,driver_version")
    assert get(service, "api/usage?period=1y", "user001").status_code == 400


def test_lab_usage_for_admins_and_a_managers_group(service, lab):
    lab_all = get(service, "api/lab?period=7d", "boss,admin").json()
    cli = subprocess.run(
        [sys.executable, "-m", "labgpu.cli", "usage", "--since", "7d", "--csv", "--db", str(lab.path)],
        capture_output=True,
        text=True,
        check=True,
    )
    cli_rows = {r["user"]: float(r["gpu_h_held"]) for r in csv.DictReader(io.StringIO(cli.stdout))}
    assert {r["name"]: pytest.approx(r["gpu_hours_held"], abs=0.06) for r in lab_all["by_user"]} == cli_rows
    assert all(0 < r["fairshare_factor"] <= 1 for r in lab_all["by_user"])
    assert {p["group"] for p in lab_all["pools"]} == {"vision"}
    assert lab_all["top_idle_holders"]
    # user002 manages vision: the lab page defaults to it and lists only its members.
    managed = get(service, "api/lab", "user002").json()
    assert managed["group"] == "vision"
    assert {r["name"] for r in managed["by_user"]} <= {"user000", "user001", "user002"}
    assert [r["name"] for r in managed["by_group"]] == ["vision"]
    page = get(service, "lab", "user002")
    assert page.status_code == 200 and "group vision" in page.text and 'id="labgpu-by-user"' in page.text
    by_group = get(service, "lab.csv?by=group&period=7d", "boss,admin").text.splitlines()
    assert (
        by_group[0] == "group,gpu_h_held,gpu_h_busy,efficiency,queued,mean_wait_h,max_wait_h,reclaims,reclaimed_gpu_h"
    )


def test_spawn_estimates_per_choice(service, lab):
    estimate = get(service, "api/estimate", "user002").json()
    assert estimate["free"] == len(lab.gpus) - len(lab.holders)
    assert [c["gpus"] for c in estimate["choices"]][:2] == [1, 2]
    assert all(c["text"] for c in estimate["choices"])


def test_json_is_json_and_not_cached(service):
    r = get(service, "api/gpus", "user000")
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Cache-Control"] == "no-store"
    json.dumps(r.json())


def test_hub_template_extends_the_stock_page(service):
    text = (Path(base.__file__).parent / "hub_templates" / "page.html").read_text()
    assert '{% extends "templates/page.html" %}' in text and "{{ super() }}" in text


def test_my_servers_and_limits_for_the_home_page(service, lab):
    me = get(service, "api/me", "user001").json()
    held = sorted(label.split("/")[1] for label, user in lab.holders.items() if user == "user001")
    assert sorted(s["name"] for s in me["servers"] if s["gpus"]) == held
    assert me["limits"]["gpus_per_server"] == 2 and "2 GPUs per server" in me["limits"]["text"]


def test_hub_pages_get_their_figures_as_scripts(service):
    """The hub's home and spawn pages load api/me.js and api/estimate.js (a same-origin script
    needs no XSRF token, which a /hub/ page cannot read)."""
    me = get(service, "api/me.js", "user001")
    assert me.headers["Content-Type"].startswith("text/javascript")
    prefix = "window.labgpu = window.labgpu || {};\nwindow.labgpu.me = "
    assert me.text.startswith(prefix)
    assert json.loads(me.text[len(prefix) :].rstrip().rstrip(";"))["user"] == "user001"
    assert "window.labgpu.estimate = " in get(service, "api/estimate.js", "user001").text
