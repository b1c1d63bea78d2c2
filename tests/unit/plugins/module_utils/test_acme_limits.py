# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rate-limit ledger: limits as configured, turns as the sliding windows give them, the file shared by runs."""

from __future__ import annotations

import datetime
import json
import os
import stat

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_limits as limits
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore, iso
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

T0 = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
LE = "https://acme-v02.api.letsencrypt.org/directory"
PEBBLE = "https://127.0.0.1:14000/dir"


def at(minutes):
    return T0 + datetime.timedelta(minutes=minutes)


@pytest.mark.parametrize("raw, directory, expected", [
    ("auto", LE, limits.LETS_ENCRYPT),
    (None, LE, limits.LETS_ENCRYPT),
    ("auto", PEBBLE, limits.Limits()),
    ("auto", "https://acme-staging-v02.api.letsencrypt.org/directory", limits.Limits()),
    ("none", LE, limits.Limits()),
    ({"new_orders": {"count": 10, "window_hours": 3}}, PEBBLE, limits.Limits(new_orders=limits.Limit(10, 3 * HOUR))),
    ({"new_orders": {"count": 1000, "window_hours": 3}}, LE, limits.LETS_ENCRYPT._replace(new_orders=limits.Limit(1000, 3 * HOUR))),
    ({"duplicate_certificates": None}, LE, limits.LETS_ENCRYPT._replace(duplicate_certificates=None)),
    ({"failed_authorizations": {"count": 3, "window_hours": 0.5}}, PEBBLE, limits.Limits(failed_authorizations=limits.Limit(3, HOUR / 2))),
])
def test_limits_as_configured(raw, directory, expected):
    assert limits.limits_from(raw, directory) == expected


@pytest.mark.parametrize("raw, named", [
    ({"orders": {"count": 1, "window_hours": 1}}, "ca_limits.orders"),
    ({"new_orders": {"count": 0, "window_hours": 1}}, "ca_limits.new_orders"),
    ({"new_orders": {"count": True, "window_hours": 1}}, "ca_limits.new_orders"),
    ({"new_orders": {"count": 5, "window_hours": 0}}, "ca_limits.new_orders"),
    ({"new_orders": {"count": 5, "window_hours": "3h"}}, "ca_limits.new_orders"),
    ({"new_orders": {"count": 5}}, "ca_limits.new_orders"),
    ({"new_orders": {"count": 5, "window_hours": 1, "burst": 2}}, "ca_limits.new_orders"),
    ({"new_orders": 300}, "ca_limits.new_orders"),
    ("plenty", "ca_limits"),
    (["new_orders"], "ca_limits"),
])
def test_bad_limits_are_named(raw, named):
    with pytest.raises(InputError) as caught:
        limits.limits_from(raw, PEBBLE)
    assert caught.value.item == named


def test_limits_read_as_a_person_would_say_them():
    assert limits.LETS_ENCRYPT.new_orders.words(limits.NEW_ORDERS) == "300 new orders per account per 3 hours"
    assert limits.LETS_ENCRYPT.duplicate_certificates.words(limits.DUPLICATES) == "5 certificates for the same set of names per 7 days"
    assert limits.LETS_ENCRYPT.failed_authorizations.words(limits.FAILED_AUTHZ) == "5 failed validations per name per 1 hour"


TEN_PER_3H = limits.Limits(new_orders=limits.Limit(10, 3 * HOUR))


def ledger_with_orders(minutes):
    ledger = limits.empty_ledger(PEBBLE, "acct")
    for number, minute in enumerate(minutes):
        ledger = limits.reserve(ledger, ["d%d.example" % number], ["example"], at(minute), "t%d" % number)
    return ledger


@pytest.mark.parametrize("placed, now, ahead, turn", [
    ([], 0, 0, None),
    ([0] * 9, 1, 0, None),                       # the tenth still goes
    ([0] * 10, 1, 0, at(180)),                   # the eleventh waits for the first to leave the window
    (list(range(10)), 30, 0, at(180)),
    (list(range(10)), 30, 3, at(183)),           # the fourth waiter takes the fourth slot
    (list(range(10)), 30, 10, at(360)),          # past a window's worth: the first waiter's slot, a window later
    (list(range(10)), 181, 0, None),             # the first order has left the window
    ([0] * 5, 1, 4, None),                       # five free slots: the fifth waiter of this run still goes
    ([0] * 5, 1, 5, at(180)),
])
def test_turns_follow_the_sliding_window(placed, now, ahead, turn):
    found = limits.turn_for(ledger_with_orders(placed), TEN_PER_3H, ["new.example"], ["example"], at(now), {(limits.NEW_ORDERS, ""): ahead})
    assert (found.at if found else None) == turn
    if found:
        assert found.kind == limits.NEW_ORDERS and "10 new orders per account per 3 hours" in found.explanation


def test_certificates_per_domain_and_duplicates_count_issued_ones_of_that_bucket():
    chosen = limits.Limits(certificates_per_domain=limits.Limit(2, 168 * HOUR), duplicate_certificates=limits.Limit(1, 168 * HOUR))
    ledger = limits.empty_ledger(PEBBLE, "acct")
    ledger = limits.reserve(ledger, ["a.one.example"], ["one.example"], at(0), "a")
    ledger = limits.reserve(ledger, ["b.one.example"], ["one.example"], at(5), "b")
    assert limits.turn_for(ledger, chosen, ["a.two.example"], ["two.example"], at(10)) is None
    full = limits.turn_for(ledger, chosen, ["c.one.example"], ["one.example"], at(10))
    assert full.kind == limits.PER_DOMAIN and full.at == at(0) + 168 * HOUR and "for one.example" in full.explanation
    same = limits.turn_for(ledger, chosen._replace(certificates_per_domain=None), ["b.one.example"], ["one.example"], at(10))
    assert same.kind == limits.DUPLICATES and same.at == at(5) + 168 * HOUR
    failed = limits.settle(ledger, "b", issued=False, now=at(6))
    assert limits.turn_for(failed, chosen, ["c.one.example"], ["one.example"], at(10)) is None, "a failed order's certificate is not counted"
    assert len(failed["orders"]) == 2, "but its order is"


def test_settle_confirms_a_reservation_at_the_time_of_issuance():
    ledger = limits.reserve(limits.empty_ledger(PEBBLE, "acct"), ["a.example"], ["a.example"], at(0), "tok")
    done = limits.settle(ledger, "tok", issued=True, now=at(2))
    assert done["certificates"] == [{"at": iso(at(2)), "names": ["a.example"], "domains": ["a.example"]}]


def test_prune_drops_what_no_limit_counts_and_reservations_of_killed_runs():
    ledger = ledger_with_orders([0, 100, 200])
    ledger = limits.settle(ledger, "t2", issued=True, now=at(200))
    ledger = limits.block(ledger, ("account", ""), at(250), "slow down")
    pruned = limits.prune(ledger, at(230), 3 * HOUR)
    assert [entry["at"] for entry in pruned["orders"]] == [iso(at(100)), iso(at(200))]
    assert [entry.get("reserved") for entry in pruned["certificates"]] == [None], "t1 is older than an hour: its run was killed"
    assert limits.prune(pruned, at(251), 3 * HOUR)["blocks"] == []
    broken = dict(ledger, orders=[{"at": "yesterday"}, "junk", {"names": []}], certificates=7)
    assert limits.prune(broken, at(230), 3 * HOUR) == dict(limits.prune(ledger, at(230), 3 * HOUR), orders=[], certificates=[])


@pytest.mark.parametrize("detail, scope", [
    ("Error creating new order :: too many new orders (300) from this account in the last 3h0m0s, retry after 2026-12-04 15:00:00 UTC",
     ("account", "")),
    ('too many certificates (50) already issued for "customer.example" in the last 168h0m0s, retry after 2026-12-08',
     ("domain", "customer.example")),
    ("too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s", ("names", "links.customer.example")),
    ('too many failed authorizations (5) for "links.customer.example" in the last 1h0m0s', ("name", "links.customer.example")),
    ("service busy", ("account", "")),
    ("", ("account", "")),
])
def test_a_429_blocks_what_its_detail_names(detail, scope):
    assert limits.block_scope(detail, ["links.customer.example"], ["customer.example"]) == scope


def test_a_block_only_lengthens_and_applies_to_its_scope():
    ledger = limits.block(limits.empty_ledger(PEBBLE, "acct"), ("domain", "customer.example"), at(60), "too many certificates")
    ledger = limits.block(ledger, ("domain", "customer.example"), at(30), "again")
    assert [entry["until"] for entry in ledger["blocks"]] == [iso(at(60))]
    blocked = limits.turn_for(ledger, limits.Limits(), ["x.customer.example"], ["customer.example"], at(0))
    assert blocked.at == at(60) and blocked.kind == "blocked" and "again" in blocked.explanation
    assert limits.turn_for(ledger, limits.Limits(), ["x.other.example"], ["other.example"], at(0)) is None


def pacer(tmp_path, chosen=TEN_PER_3H, check_mode=False):
    return limits.Pacer(StateStore(tmp_path / "state"), PEBBLE, chosen, lambda name: name.split(".", 1)[1], check_mode=check_mode)


def test_the_pacer_admits_up_to_the_limit_then_queues_in_turn(tmp_path):
    first = pacer(tmp_path)
    tokens = [first.admit("acct", ["d%d.example" % n], at(n)) for n in range(10)]
    assert len(set(tokens)) == 10
    turns = []
    for n in range(10, 13):
        with pytest.raises(limits.Queued) as caught:
            first.admit("acct", ["d%d.example" % n], at(20))
        turns.append(caught.value.turn.at)
        assert caught.value.reason == limits.QUEUED and iso(caught.value.turn.at) in caught.value.msg
    assert turns == [at(180), at(181), at(182)]
    path = tmp_path / "state" / "ledger" / first.file_name("acct")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert len(json.loads(path.read_text())["orders"]) == 10, "queued orders are not counted"
    later = pacer(tmp_path)  # another run reads the same file: after the window the next ones go
    later.admit("acct", ["d10.example"], at(180))
    with pytest.raises(limits.Queued):
        pacer(tmp_path).admit("acct", ["d11.example"], at(180))
    assert pacer(tmp_path).file_name("other account") != first.file_name("acct"), "one ledger per account"


def test_check_mode_reads_the_ledger_and_writes_nothing(tmp_path):
    writer = pacer(tmp_path)
    for n in range(10):
        writer.admit("acct", ["d%d.example" % n], at(0))
    path = tmp_path / "state" / "ledger" / writer.file_name("acct")
    before = path.read_bytes()
    with pytest.raises(limits.Queued):
        pacer(tmp_path, check_mode=True).admit("acct", ["new.example"], at(1))
    assert path.read_bytes() == before
    empty = tmp_path / "empty"
    limits.Pacer(StateStore(empty / "state"), PEBBLE, TEN_PER_3H, str, check_mode=True).admit("acct", ["a.example"], at(0))
    assert not empty.exists()


def test_a_429_recorded_by_one_run_queues_the_next(tmp_path):
    detail = 'too many certificates (50) already issued for "customer.example"'
    pacer(tmp_path, limits.Limits()).rate_limited("acct", ["a.customer.example"], detail, at(90), at(0))
    with pytest.raises(limits.Queued) as caught:
        pacer(tmp_path, limits.Limits()).admit("acct", ["b.customer.example"], at(1))
    assert caught.value.turn.at == at(90)
    pacer(tmp_path, limits.Limits()).admit("acct", ["b.other.example"], at(1))
    pacer(tmp_path, limits.Limits()).admit("acct", ["b.customer.example"], at(90))


def test_without_limits_no_ledger_is_written_until_a_429_leaves_a_block(tmp_path):
    unlimited = pacer(tmp_path, limits.Limits())
    tokens = [unlimited.admit("acct", ["d%d.customer.example" % n], at(0)) for n in range(400)]
    for token in tokens:
        unlimited.settle("acct", token, True, at(1))
    assert len(set(tokens)) == 400 and not (tmp_path / "state").exists()
    unlimited.rate_limited("acct", ["x.customer.example"], 'too many failed authorizations (5) for "x.customer.example"', at(30), at(2))
    with pytest.raises(limits.Queued):
        unlimited.admit("acct", ["x.customer.example"], at(3))
    unlimited.admit("acct", ["y.customer.example"], at(3))
    ledger = json.loads((tmp_path / "state" / "ledger" / unlimited.file_name("acct")).read_text())
    assert ledger["orders"] == [] and [(b["scope"], b["key"]) for b in ledger["blocks"]] == [("name", "x.customer.example")]
