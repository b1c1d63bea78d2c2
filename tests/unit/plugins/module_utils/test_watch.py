# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pending watcher's schedule: when a domain that is not issued is checked again, and when the watcher gives up."""

from __future__ import annotations

import datetime
import typing as t

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _watch
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import iso, parse_iso
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

T0 = datetime.datetime(2026, 12, 4, 10, 0, 0, tzinfo=datetime.timezone.utc)
MIN, HOUR, DAY = datetime.timedelta(minutes=1), datetime.timedelta(hours=1), datetime.timedelta(days=1)
DEFAULT = _watch.Schedule()


def run_checks(times: t.Sequence[datetime.datetime], schedule: _watch.Schedule = DEFAULT) -> t.List[t.Dict[str, t.Any]]:
    """The watch after each check at these times, the first starting it."""
    watch: t.Optional[t.Dict[str, t.Any]] = None
    seen = []
    for moment in times:
        watch = _watch.checked(watch, moment, schedule)
        seen.append(watch)
    return seen


def test_the_default_schedule_1_2_5_10_30_minutes_then_hourly_then_six_hourly() -> None:
    # Each check at the moment the previous one scheduled: the moments, counted from the first check.
    watch: t.Optional[t.Dict[str, t.Any]] = None
    moment, offsets = T0, []
    while len(offsets) < 40:
        watch = _watch.checked(watch, moment, DEFAULT)
        moment = parse_iso(watch["next_check"])
        offsets.append(moment - T0)
    assert offsets[:5] == [MIN, 2 * MIN, 5 * MIN, 10 * MIN, 30 * MIN]
    assert offsets[5:28] == [n * HOUR for n in range(1, 24)], "hourly for the rest of the first day"
    assert offsets[28:31] == [DAY, DAY + 6 * HOUR, DAY + 12 * HOUR], "then every 6 hours"
    assert watch["attempts"] == 40 and watch["since"] == iso(T0) and watch["stopped"] is None


@pytest.mark.parametrize("pending_for, next_offset", [
    (datetime.timedelta(0), MIN), (30 * datetime.timedelta(seconds=1), MIN), (MIN, 2 * MIN), (3 * MIN, 5 * MIN), (7 * MIN, 10 * MIN),
    (10 * MIN, 30 * MIN), (29 * MIN, 30 * MIN), (30 * MIN, HOUR), (61 * MIN, 2 * HOUR), (23 * HOUR + 30 * MIN, DAY),
    (DAY, DAY + 6 * HOUR), (DAY + 7 * HOUR, DAY + 12 * HOUR), (20 * DAY + HOUR, 20 * DAY + 6 * HOUR),
])
def test_next_moment_table(pending_for: datetime.timedelta, next_offset: datetime.timedelta) -> None:
    assert _watch.next_moment(DEFAULT, T0, T0 + pending_for) == T0 + next_offset


def test_a_check_between_moments_or_a_late_one_keeps_the_schedule() -> None:
    watch = _watch.checked(None, T0, DEFAULT)                           # onboarding
    watch = _watch.checked(watch, T0 + 90 * datetime.timedelta(seconds=1), DEFAULT)  # a playbook run in between
    assert watch["next_check"] == iso(T0 + 2 * MIN) and watch["attempts"] == 2
    watch = _watch.checked(watch, T0 + 25 * MIN, DEFAULT)               # the watcher was down: no catching up
    assert watch["next_check"] == iso(T0 + 30 * MIN)


def test_it_gives_up_after_the_give_up_age_and_stays_stopped() -> None:
    schedule = _watch.Schedule(give_up_days=30)
    watch = _watch.checked(None, T0, schedule)
    watch = _watch.checked(watch, T0 + 29 * DAY, schedule)
    assert watch["next_check"] and not watch["stopped"]
    watch = _watch.checked(watch, T0 + 30 * DAY, schedule)
    assert watch["next_check"] is None and watch["stopped"] == iso(T0 + 30 * DAY)
    assert not _watch.due(watch, T0 + 365 * DAY), "a stopped watch is never due on its own"
    again = _watch.checked(watch, T0 + 31 * DAY, schedule)  # a full onboarding run still checks it: it stays stopped
    assert again["stopped"] == watch["stopped"] and again["next_check"] is None and again["last_check"] == iso(T0 + 31 * DAY)


def test_verify_now_starts_the_schedule_over() -> None:
    stopped = {"since": iso(T0), "attempts": 151, "last_check": iso(T0 + 30 * DAY), "next_check": None, "stopped": iso(T0 + 30 * DAY)}
    status, watch = _watch.after_check({"watch": stopped}, {"ssl_status": "unknown", "reason": "dns_not_ready", "message": "x"},
                                       T0 + 40 * DAY, DEFAULT, reset_first=True)
    assert watch == {"since": iso(T0 + 40 * DAY), "attempts": 1, "last_check": iso(T0 + 40 * DAY),
                     "next_check": iso(T0 + 40 * DAY + MIN), "stopped": None}, "the schedule starts over from this check"
    assert status["reason"] == "dns_not_ready"


@pytest.mark.parametrize("watch, at, due", [
    (None, T0, True),
    ({}, T0, True),
    ({"next_check": iso(T0 + MIN)}, T0, False),
    ({"next_check": iso(T0 + MIN)}, T0 + MIN, True),
    ({"next_check": "garbage"}, T0, True),
    ({"next_check": None, "stopped": iso(T0)}, T0 + DAY, False),
])
def test_due(watch: t.Optional[t.Dict[str, t.Any]], at: datetime.datetime, due: bool) -> None:
    assert _watch.due(watch, at) is due


@pytest.mark.parametrize("status, state, watched", [
    ({"ssl_status": "issued", "reason": "issued"}, {}, False),
    ({"ssl_status": "pending", "reason": "dns_drift"}, {"serial": "0a"}, True),  # a held certificate: checked until DNS is right
    ({"ssl_status": "unknown", "reason": "caa_blocked"}, {}, True),
    ({"ssl_status": "pending", "reason": "ca_unreachable"}, {}, True),
    ({"ssl_status": "unknown", "reason": "no_edge_route"}, {}, False),  # a sending domain with https: false
    ({"ssl_status": "issued", "reason": "caa_dns_error"}, {"serial": "0a", "held": True}, True),  # issued, its renewal held
])
def test_who_is_watched(status: t.Dict[str, t.Any], state: t.Dict[str, t.Any], watched: bool) -> None:
    _status, watch = _watch.after_check(state, status, T0, DEFAULT)
    assert (watch is not None) is watched


def test_giving_up_makes_the_domain_unknown_with_what_to_do() -> None:
    state = {"watch": {"since": iso(T0), "attempts": 150, "next_check": iso(T0 + 30 * DAY)}}
    found = {"ssl_status": "pending", "label": "SSL Pending", "reason": "ca_unreachable", "message": "The CA did not answer."}
    status, watch = _watch.after_check(state, found, T0 + 30 * DAY, DEFAULT)
    assert watch["stopped"] and (status["ssl_status"], status["label"], status["reason"]) == ("unknown", "SSL Unknown", "watch_stopped")
    assert "checked 151 times over 30 days" in status["message"] and "The CA did not answer." in status["message"]
    assert "onboard_domain.yml -e domain=NAME" in status["message"] and "linkcert-renew --domain NAME" in status["message"]


@pytest.mark.parametrize("attempts", ["many", True, -3, 2.5, None])
def test_a_garbled_attempt_count_counts_as_none(attempts: t.Any) -> None:
    assert _watch.checked({"since": iso(T0), "attempts": attempts}, T0 + MIN, DEFAULT)["attempts"] == 1


@pytest.mark.parametrize("raw, item", [
    ({"backoff": []}, "backoff"),
    ({"backoff": "60,120"}, "backoff"),
    ({"backoff": [60, 0]}, "backoff[1]"),
    ({"backoff": [60, True]}, "backoff[1]"),
    ({"hourly": "often"}, "hourly"),
    ({"later": 10 ** 9}, "later"),
    ({"give_up_days": 0}, "give_up_days"),
    ({"give_up_days": "never"}, "give_up_days"),
])
def test_a_bad_schedule_is_refused_naming_the_key(raw: t.Dict[str, t.Any], item: str) -> None:
    with pytest.raises(InputError) as caught:
        _watch.schedule_from(raw)
    assert caught.value.item == item


def test_schedule_from_defaults_and_round_trip() -> None:
    assert _watch.schedule_from(None) == DEFAULT
    short = _watch.schedule_from({"backoff": [3, 3], "hourly": 3, "give_up_days": 0.5})
    assert _watch.schedule_from(short.to_json()) == short
    seen = run_checks([T0, T0 + 3 * datetime.timedelta(seconds=1)], short)
    assert seen[0]["next_check"] == iso(T0 + datetime.timedelta(seconds=3))
    assert seen[-1]["next_check"] == iso(T0 + datetime.timedelta(seconds=6)), "then every hourly (3 s) moment"


def test_a_held_certificate_keeps_its_status_when_the_watcher_gives_up() -> None:
    state = {"serial": "0a", "watch": {"since": iso(T0), "attempts": 150, "next_check": iso(T0 + 30 * DAY)}}
    found = {"ssl_status": "pending", "label": "SSL Pending", "reason": "dns_drift", "message": "DNS changed after the certificate was issued."}
    status, watch = _watch.after_check(state, found, T0 + 30 * DAY, DEFAULT)
    assert watch["stopped"] and status == found


@pytest.mark.parametrize("status, state, next_check", [
    # A queued order's turn is the next check, whatever the schedule says (earlier would find it still waiting).
    ({"ssl_status": "pending", "reason": "ca_rate_limit_queued", "retry_after": iso(T0 + datetime.timedelta(hours=3))}, {},
     T0 + datetime.timedelta(hours=3)),
    # The role's check passes no retry_after: the state file the module wrote in the same run has it.
    ({"ssl_status": "pending", "reason": "ca_rate_limit_queued"},
     {"reason": "ca_rate_limit_queued", "retry_after": iso(T0 + datetime.timedelta(minutes=20))}, T0 + datetime.timedelta(minutes=20)),
    ({"ssl_status": "pending", "reason": "acme_rate_limited", "retry_after": iso(T0 + datetime.timedelta(minutes=7))}, {},
     T0 + datetime.timedelta(minutes=7)),
    # A stale turn of another reason, or one already past, leaves the schedule alone.
    ({"ssl_status": "unknown", "reason": "cname_mismatch"}, {"reason": "ca_rate_limit_queued", "retry_after": iso(T0 + datetime.timedelta(hours=3))},
     T0 + datetime.timedelta(minutes=1)),
    ({"ssl_status": "pending", "reason": "ca_rate_limit_queued", "retry_after": iso(T0 - datetime.timedelta(minutes=1))}, {},
     T0 + datetime.timedelta(minutes=1)),
])
def test_a_paced_domain_is_checked_when_its_turn_comes(status: t.Dict[str, t.Any], state: t.Dict[str, t.Any],
                                                       next_check: datetime.datetime) -> None:
    result, watch = _watch.after_check(state, status, T0, DEFAULT)
    assert watch is not None and parse_iso(watch["next_check"]) == next_check and watch["attempts"] == 1
    assert result.get("retry_after") == status.get("retry_after")
