"""Pacing under the CA's rate limits (issue 15, part 3), against the lab's Pebble.

Pebble enforces no rate limit, so the lab sets one: 10 new orders per account per 3 hours (``ca_limits``). 25 domains
are onboarded in one run of acme_http01_cert, as a provider moving its customers would: exactly 10 orders reach Pebble
(counted from Pebble's own log, which logs every order it creates), the other 15 stay SSL Pending, reason
``ca_rate_limit_queued``, each with the time its turn comes. A second run at once orders nothing. A run with the host
clock 3 hours and a minute ahead (libfaketime preloaded into the ansible process tree; Pebble keeps the real time)
orders the next 10, and the last 5 wait again, with turns 3 hours after those.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from typing import Any, Dict, List

import pytest
from labtools import BIN, REPO, ModuleRun, acme_args, ansible_env
from test_faults_clock import LIBFAKETIME, require_libfaketime
from test_faults_process import order_count

pytestmark = [pytest.mark.lab, pytest.mark.integration]

UTC = datetime.timezone.utc
WINDOW = datetime.timedelta(hours=3)
AHEAD = int(WINDOW.total_seconds()) + 60
LIMITS = {"new_orders": {"count": 10, "window_hours": 3}}
DOMAINS = ["c%02d.paced.test" % number for number in range(25)]


def run(lab: Any, root: Any, ahead: int = 0) -> ModuleRun:
    args = acme_args(lab, root / "live", root / "state", [{"domain": domain} for domain in DOMAINS], ca_limits=LIMITS, workers=8)
    cmd = [str(BIN / "ansible"), "localhost", "-m", "mailops.linkcert.acme_http01_cert", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-c", "local"]
    variables = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    if ahead:
        variables.update({"LD_PRELOAD": LIBFAKETIME[0], "FAKETIME": "+%d" % ahead})
    proc = subprocess.run(cmd, env=ansible_env(variables), capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    found = ModuleRun(proc)
    assert found.rc == 0, found.stdout + found.stderr
    return found


def parse(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def queued(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in results if r["reason"] == "ca_rate_limit_queued"]


def test_onboarding_25_domains_under_a_limit_of_10_orders_per_3_hours(lab, tmp_path):
    require_libfaketime()
    for domain in DOMAINS:
        lab.dns_set("a", domain, [lab.addr])
    orders = order_count(lab)
    started = datetime.datetime.now(UTC).replace(microsecond=0)
    first = run(lab, tmp_path).result["results"]
    finished = datetime.datetime.now(UTC)
    assert order_count(lab) - orders == 10, "exactly 10 orders reach Pebble"
    issued = [r for r in first if r["action"] == "issued"]
    waiting = queued(first)
    assert len(issued) == 10 and all(r["ssl_status"] == "issued" for r in issued)
    assert len(waiting) == 15 and {(r["ssl_status"], r["label"], r["action"]) for r in waiting} == {("pending", "SSL Pending", "none")}
    turns = sorted(parse(r["retry_after"]) for r in waiting)
    # The first 10 waiters take the slots the 10 orders free 3 hours after they were placed; the last 5 wait a window more.
    assert all(started + WINDOW <= turn <= finished + WINDOW for turn in turns[:10]), turns
    assert all(started + 2 * WINDOW <= turn <= finished + 2 * WINDOW for turn in turns[10:]), turns
    for result in waiting:
        assert result["retry_after"] in result["message"] and "10 new orders per account per 3 hours" in result["message"]
        assert not (tmp_path / "live" / result["domain"]).exists(), "nothing installed for a waiting domain"
        state = json.loads((tmp_path / "state" / ("%s.json" % result["domain"])).read_text())
        assert (state["reason"], state["retry_after"]) == ("ca_rate_limit_queued", result["retry_after"])

    again = run(lab, tmp_path).result
    assert order_count(lab) - orders == 10 and not again["changed"], "a run before the turns come orders nothing"
    assert sorted(r["domain"] for r in queued(again["results"])) == sorted(r["domain"] for r in waiting)

    later = run(lab, tmp_path, ahead=AHEAD).result["results"]
    assert order_count(lab) - orders == 20, "3 hours later, the next 10 go"
    now_issued = {r["domain"] for r in later if r["action"] == "issued"}
    assert len(now_issued) == 10 and now_issued <= {r["domain"] for r in waiting}
    assert {r["domain"] for r in later if r["action"] == "none" and r["ssl_status"] == "issued"} == {r["domain"] for r in issued}
    last = queued(later)
    assert len(last) == 5 and all(parse(r["retry_after"]) >= started + datetime.timedelta(seconds=AHEAD) + WINDOW for r in last)
