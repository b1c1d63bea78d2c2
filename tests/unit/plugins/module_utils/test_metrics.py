# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Prometheus metrics for node_exporter's textfile collector: rendering (parsed back with prometheus_client), files."""

from __future__ import annotations

import datetime
import importlib.util
import os
import stat
import sys
import typing as t
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.mailops.linkcert.plugins.module_utils import _metrics, _status
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import MAX_FAILURES_KEPT, StateStore, iso, record_failure
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DOMAIN = "links.customer.com"
RUN = {"job": "timer", "node": "edge-1", "started": 1772366400.0, "finished": 1772366412.25, "outcome": "success",
       "counts": {"renewed": 2, "failed": 0, "none": 5}}


def at(days: float) -> str:
    return iso(NOW + datetime.timedelta(days=days))


def epoch(days: float) -> float:
    return (NOW + datetime.timedelta(days=days)).timestamp()


def failures(*days: float) -> t.List[t.Dict[str, t.Any]]:
    return [{"at": at(d), "reason": "acme_unauthorized", "message": "no"} for d in days]


def issued(**extra: t.Any) -> t.Dict[str, t.Any]:
    """A certificate issued 30 days ago for 90 days, renewed successfully then."""
    state = {"domain": DOMAIN, "ssl_status": "issued", "label": "SSL Issued", "reason": "issued", "action": "issued", "serial": "0abc",
             "not_before": at(-30), "not_after": at(60), "last_success": at(-30), "last_attempt": at(-30)}
    state.update(extra)
    return state


def parse(text: str) -> t.Dict[str, t.Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: t.Mapping[str, t.Any], name: str, **labels: str) -> t.Optional[float]:
    found = [s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def series(text: str) -> t.List[t.Tuple[str, t.Tuple[t.Tuple[str, str], ...]]]:
    return [(s.name, tuple(sorted(s.labels.items()))) for family in text_string_to_metric_families(text) for s in family.samples]


# id, state, expected {metric: value or None (no sample)}, expected status
CASES = [
    ("fresh", issued(), {"linkcert_certificate_expiry_timestamp_seconds": epoch(60),
                         "linkcert_certificate_last_success_timestamp_seconds": epoch(-30),
                         "linkcert_certificate_last_attempt_timestamp_seconds": epoch(-30),
                         "linkcert_certificate_consecutive_failures": 0, "linkcert_certificate_expiry_alert": 0}, "issued"),
    ("last-tenth", issued(not_before=at(-85), not_after=at(5)), {"linkcert_certificate_expiry_alert": 1}, "issued"),
    ("just-above-last-tenth", issued(not_before=at(-80), not_after=at(10)), {"linkcert_certificate_expiry_alert": 0}, "issued"),
    ("expired", issued(ssl_status="pending", label="SSL Pending", not_before=at(-91), not_after=at(-1)),
     {"linkcert_certificate_expiry_alert": 1, "linkcert_certificate_expiry_timestamp_seconds": epoch(-1)}, "pending"),
    ("failing-renewal", issued(action="failed", reason="acme_unauthorized", last_attempt=at(-0.5), failures=failures(-1, -0.5)),
     {"linkcert_certificate_consecutive_failures": 2, "linkcert_certificate_last_attempt_timestamp_seconds": epoch(-0.5)}, "issued"),
    ("failures-before-success-only", issued(failures=failures(-31, -30.5)), {"linkcert_certificate_consecutive_failures": 0}, "issued"),
    ("some-before-some-after", issued(failures=failures(-31, -2, -1)), {"linkcert_certificate_consecutive_failures": 2}, "issued"),
    ("never-issued", {"domain": DOMAIN, "ssl_status": "pending", "reason": "acme_connection", "action": "failed", "last_attempt": at(-1),
                      "failures": failures(-3, -2, -1) + [{"at": "yesterday"}, "junk"]},
     {"linkcert_certificate_consecutive_failures": 3, "linkcert_certificate_expiry_timestamp_seconds": None,
      "linkcert_certificate_last_success_timestamp_seconds": None, "linkcert_certificate_expiry_alert": 0}, "pending"),
    ("dns-not-ready", {"domain": DOMAIN, "ssl_status": "unknown", "label": "SSL Unknown", "reason": "dns_not_ready"},
     {"linkcert_certificate_consecutive_failures": 0, "linkcert_certificate_last_attempt_timestamp_seconds": None}, "unknown"),
    ("no-status", {"domain": DOMAIN, "not_after": "not a date"}, {"linkcert_certificate_expiry_timestamp_seconds": None}, "unknown"),
    ("as-domain-status-returns", _metrics.record(issued(failures=failures(-2, -1), ari={"renew_at": at(1)})),
     {"linkcert_certificate_consecutive_failures": 2}, "issued"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_domain_values(case):
    _id, state, expected, status = case
    families = parse(_metrics.render([state], RUN, NOW))
    for name, wanted in expected.items():
        assert value(families, name, domain=DOMAIN, node="edge-1") == wanted, name
    assert {s.labels["status"]: s.value for s in families["linkcert_domain_status"].samples} == {
        "issued": float(status == "issued"), "pending": float(status == "pending"), "unknown": float(status == "unknown")}
    (info,) = families["linkcert_domain_info"].samples
    assert info.value == 1 and info.labels["label"] == (state.get("label") or _status.LABELS[status])
    assert info.labels["action"] == state.get("action", "none") and info.labels["serial"] == state.get("serial", "")


def test_every_family_parses_with_help_and_type_even_without_samples():
    for records in ([], [issued(), dict(issued(), domain="b.customer.com")]):
        text = _metrics.render(records, RUN, NOW)
        families = parse(text)
        assert list(families) == [name for name, _help in _metrics.FAMILIES]
        for name, help_text in _metrics.FAMILIES:
            assert families[name].type == "gauge" and families[name].documentation == help_text
            assert name.startswith("linkcert_")
            assert "# HELP %s " % name in text and "# TYPE %s gauge" % name in text
    empty = parse(_metrics.render([], RUN, NOW))
    assert not any(empty[name].samples for name, _help in _metrics.DOMAIN_FAMILIES)


WATCH_FAMILIES = ("linkcert_domain_next_check_timestamp_seconds", "linkcert_domain_check_attempts", "linkcert_domain_watch_stopped")


def not_issued(**extra: t.Any) -> t.Dict[str, t.Any]:
    """A domain onboarded whose CNAME is not published yet, checked by the pending watcher."""
    state = {"domain": DOMAIN, "ssl_status": "unknown", "label": "SSL Unknown", "reason": "dns_not_ready",
             "watch": {"since": at(-1), "attempts": 25, "last_check": at(-1 / 24), "next_check": at(0.25), "stopped": None}}
    state.update(extra)
    return state


def watch(**extra: t.Any) -> t.Dict[str, t.Any]:
    found = dict(not_issued()["watch"])
    found.update(extra)
    return found


# id, state, expected {watch family: value or None (no sample)}
WATCH_CASES = [
    ("watching", not_issued(), {"linkcert_domain_next_check_timestamp_seconds": epoch(0.25), "linkcert_domain_check_attempts": 25,
                                "linkcert_domain_watch_stopped": 0}),
    ("first-check", not_issued(watch=watch(attempts=1, since=at(0), last_check=at(0), next_check=iso(NOW + datetime.timedelta(minutes=1)))),
     {"linkcert_domain_next_check_timestamp_seconds": epoch(1 / 1440), "linkcert_domain_check_attempts": 1, "linkcert_domain_watch_stopped": 0}),
    ("pending-ca-error", not_issued(ssl_status="pending", label="SSL Pending", reason="acme_connection"),
     {"linkcert_domain_next_check_timestamp_seconds": epoch(0.25), "linkcert_domain_check_attempts": 25, "linkcert_domain_watch_stopped": 0}),
    ("stopped", not_issued(reason="watch_stopped", watch=watch(attempts=151, next_check=None, stopped=at(-2))),
     {"linkcert_domain_next_check_timestamp_seconds": None, "linkcert_domain_check_attempts": 151, "linkcert_domain_watch_stopped": 1}),
    ("stopped-with-a-stale-next-check", not_issued(watch=watch(stopped=at(-2))),
     {"linkcert_domain_next_check_timestamp_seconds": None, "linkcert_domain_check_attempts": 25, "linkcert_domain_watch_stopped": 1}),
    ("started-over", not_issued(watch={}), {"linkcert_domain_next_check_timestamp_seconds": None, "linkcert_domain_check_attempts": None,
                                            "linkcert_domain_watch_stopped": 0}),
    ("no-watch", not_issued(watch=None), {name: None for name in WATCH_FAMILIES}),
    ("never-checked", {"domain": DOMAIN, "ssl_status": "unknown", "reason": "dns_not_ready"}, {name: None for name in WATCH_FAMILIES}),
    ("issued-with-a-stale-watch", issued(watch=watch()), {name: None for name in WATCH_FAMILIES}),
    # A state file is a file on disk: what is unreadable is left out, never a crash (and never a 0: "checked in 1970").
    ("next-check-unreadable", not_issued(watch=watch(next_check="in a while")),
     {"linkcert_domain_next_check_timestamp_seconds": None, "linkcert_domain_check_attempts": 25, "linkcert_domain_watch_stopped": 0}),
    ("next-check-none-in-utc", not_issued(watch=watch(next_check="9999-12-31T23:59:00-01:00")),
     {"linkcert_domain_next_check_timestamp_seconds": None, "linkcert_domain_check_attempts": 25, "linkcert_domain_watch_stopped": 0}),
    ("next-check-a-number", not_issued(watch=watch(next_check=1772366400)),
     {"linkcert_domain_next_check_timestamp_seconds": None, "linkcert_domain_watch_stopped": 0}),
    ("attempts-bool", not_issued(watch=watch(attempts=True)), {"linkcert_domain_check_attempts": None, "linkcert_domain_watch_stopped": 0}),
    ("attempts-negative", not_issued(watch=watch(attempts=-1)), {"linkcert_domain_check_attempts": None}),
    ("attempts-text", not_issued(watch=watch(attempts="25")), {"linkcert_domain_check_attempts": None}),
    ("attempts-float", not_issued(watch=watch(attempts=25.0)), {"linkcert_domain_check_attempts": None}),
    ("attempts-zero", not_issued(watch=watch(attempts=0)), {"linkcert_domain_check_attempts": 0}),
    ("watch-not-a-dict", not_issued(watch="2026-03-01T18:00:00Z"), {name: None for name in WATCH_FAMILIES}),
    ("watch-a-list", not_issued(watch=[watch()]), {name: None for name in WATCH_FAMILIES}),
]


@pytest.mark.parametrize("case", WATCH_CASES, ids=[c[0] for c in WATCH_CASES])
def test_pending_watcher_values(case):
    _id, state, expected = case
    text = _metrics.render([state], RUN, NOW)
    families = parse(text)
    for name, wanted in expected.items():
        assert value(families, name, domain=DOMAIN, node="edge-1") == wanted, name
    for name in WATCH_FAMILIES:
        assert families[name].type == "gauge" and "# HELP %s " % name in text  # with or without samples
        assert all(set(s.labels) == {"domain", "node"} for s in families[name].samples)


def test_pending_watcher_series_only_for_watched_domains(tmp_path):
    store = StateStore(tmp_path / "state")
    store.save(DOMAIN, issued())
    store.save("a.customer.com", not_issued(domain="a.customer.com"))
    store.save("b.customer.com", not_issued(domain="b.customer.com", reason="watch_stopped", watch=watch(next_check=None, stopped=at(-2))))
    store.save("c.customer.com", {"domain": "c.customer.com", "ssl_status": "pending", "reason": "awaiting_issuance"})
    records = _metrics.read_records(str(tmp_path / "state"))
    assert records[0]["watch"] == not_issued()["watch"], "read_records keeps the watch"
    families = parse(_metrics.render(records, RUN, NOW))
    assert {s.labels["domain"]: s.value for s in families["linkcert_domain_watch_stopped"].samples} == {"a.customer.com": 0, "b.customer.com": 1}
    assert {s.labels["domain"]: s.value for s in families["linkcert_domain_check_attempts"].samples} == {"a.customer.com": 25, "b.customer.com": 25}
    assert {s.labels["domain"]: s.value for s in families["linkcert_domain_next_check_timestamp_seconds"].samples} == {"a.customer.com": epoch(0.25)}


RUN_CASES = [
    ("success", dict(RUN), {"linkcert_run_duration_seconds": 12.25, "linkcert_run_success": 1,
                            "linkcert_run_last_timestamp_seconds": 1772366412.25}, {"issued": 0, "renewed": 2, "failed": 0, "none": 5}),
    ("failure", dict(RUN, job="onboard", outcome="failure", counts={"issued": 1, "failed": 2}), {"linkcert_run_success": 0},
     {"issued": 1, "renewed": 0, "failed": 2, "none": 0}),
    ("duration-unknown", dict(RUN, job="renew", started=None, counts=None), {"linkcert_run_duration_seconds": None, "linkcert_run_success": 1},
     {"issued": 0, "renewed": 0, "failed": 0, "none": 0}),
    ("clock-went-back", dict(RUN, started=RUN["finished"] + 5), {"linkcert_run_duration_seconds": 0.0}, None),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_values(case):
    _id, run, expected, counts = case
    families = parse(_metrics.render(None, run, NOW))
    assert set(families) == {name for name, _help in _metrics.RUN_FAMILIES}
    for name, wanted in expected.items():
        assert value(families, name, job=run["job"], node="edge-1") == wanted, name
    if counts is not None:
        assert {s.labels["action"]: s.value for s in families["linkcert_run_certificates"].samples} == counts


@pytest.mark.parametrize("bad", [dict(RUN, job="cron"), dict(RUN, outcome="ok"), dict(RUN, job=None)])
def test_bad_run_is_refused(bad):
    with pytest.raises(InputError):
        _metrics.render([], bad, NOW)


ESCAPES = [
    ("quote", 'CAA says "no"'),
    ("backslash", "C:\\path\\n is not a newline"),
    ("newline", "line one\nline two"),
    ("all", 'a\\"b"\n\\'),
    ("unicode", "bücher.example – ok"),
    ("none", None),
]


@pytest.mark.parametrize("case", ESCAPES, ids=[c[0] for c in ESCAPES])
def test_label_values_are_escaped(case):
    _id, text = case
    rendered = _metrics.render([issued(reason=text, label=text)], dict(RUN, node=text), NOW)
    assert len(rendered.splitlines()) == len(_metrics.render([issued()], RUN, NOW).splitlines()), "a newline leaked into a line"
    families = parse(rendered)
    (info,) = families["linkcert_domain_info"].samples
    expected = "" if text is None else text
    assert info.labels["reason"] == expected and info.labels["node"] == expected
    assert value(families, "linkcert_run_success", job="timer", node=expected) == 1
    assert (info.labels["label"] == expected) or (text is None and info.labels["label"] == "SSL Issued")


def test_escape_label():
    assert _metrics.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_no_duplicate_series_within_or_across_files():
    records = [issued(), issued(), dict(issued(), domain="b.customer.com"), {"ssl_status": "pending"}]  # a domain twice, one without
    everything = []
    for job in ("onboard", "renew", "timer"):
        files = _metrics.files(records, dict(RUN, job=job), NOW)
        assert set(files) == {_metrics.DOMAINS_FILE, "linkcert-run-%s.prom" % job}
        domain_names = {family.name for family in text_string_to_metric_families(files[_metrics.DOMAINS_FILE])}
        run_names = {family.name for family in text_string_to_metric_families(files[_metrics.run_file(job)])}
        assert domain_names == {n for n, _h in _metrics.DOMAIN_FAMILIES} and run_names == {n for n, _h in _metrics.RUN_FAMILIES}
        if job == "onboard":
            everything += series(files[_metrics.DOMAINS_FILE])
        everything += series(files[_metrics.run_file(job)])
    assert len(everything) == len(set(everything)), "a series is written twice"
    assert len({labels for name, labels in everything if name == "linkcert_certificate_expiry_alert"}) == 2


def test_help_lines_are_the_same_in_every_run_file():
    """node_exporter merges a family found in several files only when HELP and TYPE agree."""
    headers = [[line for line in _metrics.render(None, dict(RUN, job=job), NOW).splitlines() if line.startswith("#")]
               for job in _metrics.JOBS]
    assert headers[0] == headers[1] == headers[2]


def test_numbers():
    assert [_metrics._number(v) for v in (True, 3, 0.5, 1772366412.25, float("nan"), float("inf"), float("-inf"))] == [
        "1", "3", "0.5", "1772366412.25", "NaN", "+Inf", "-Inf"]


def test_consecutive_failures_from_the_capped_ledger():
    state = issued()
    for minute in range(MAX_FAILURES_KEPT + 5):
        state = record_failure(state, NOW + datetime.timedelta(minutes=minute), "acme_connection", "down")
    assert len(state["failures"]) == MAX_FAILURES_KEPT
    assert _metrics.consecutive_failures(state) == MAX_FAILURES_KEPT
    assert _metrics.consecutive_failures(dict(state, last_success=iso(NOW + datetime.timedelta(minutes=30)))) == 0
    assert _metrics.consecutive_failures({"failures": "junk"}) == 0


def test_read_records_sums_up_the_ledger(tmp_path):
    store = StateStore(tmp_path / "state")
    store.save(DOMAIN, issued(failures=failures(-40, -2, -1), ari={"renew_at": at(1)}))
    store.save("b.customer.com", {"domain": "b.customer.com", "ssl_status": "unknown"})
    records = _metrics.read_records(str(tmp_path / "state"))
    assert [r["domain"] for r in records] == ["b.customer.com", DOMAIN]
    assert (records[1]["consecutive_failures"], records[1]["failed_recently"]) == (2, 3)
    assert "failures" not in records[1] and "ari" not in records[1]
    assert _metrics.read_records(str(tmp_path / "missing")) == []


def test_write_creates_the_directory_and_replaces_the_file_atomically(tmp_path):
    directory = tmp_path / "textfile" / "collector"
    old = os.umask(0o077)
    try:
        paths = _metrics.write_files(str(directory), [issued()], RUN, NOW)
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert sorted(Path(p).name for p in paths) == ["linkcert-domains.prom", "linkcert-run-timer.prom"]
    domains = directory / "linkcert-domains.prom"
    assert stat.S_IMODE(domains.stat().st_mode) == 0o644
    first = domains.read_bytes()
    assert value(parse(first.decode()), "linkcert_certificate_expiry_alert", domain=DOMAIN) == 0
    with open(domains, "rb") as old:  # the first file, held open: a rename leaves it whole and unlinked
        _metrics.write_files(str(directory), [issued(not_before=at(-89), not_after=at(1))], dict(RUN, job="onboard"), NOW)
        assert os.fstat(old.fileno()).st_nlink == 0 and old.read() == first, "the file was rewritten in place, not replaced"
    assert value(parse(domains.read_text()), "linkcert_certificate_expiry_alert", domain=DOMAIN) == 1
    assert sorted(p.name for p in directory.iterdir()) == ["linkcert-domains.prom", "linkcert-run-onboard.prom", "linkcert-run-timer.prom"]


def test_write_failure_is_a_linkcert_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LinkcertError) as caught:
        _metrics.write(str(blocker / "sub" / "linkcert-domains.prom"), "x\n")
    assert caught.value.reason == "write_failed"


def _runner_module():
    script = Path(__file__).resolve().parents[4] / "roles" / "renewal" / "files" / "linkcert-renew.py"
    spec = importlib.util.spec_from_file_location("linkcert_renew_under_test", script)
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


def test_runner_write_metrics(tmp_path, capsys, monkeypatch):
    runner = _runner_module()
    monkeypatch.setattr(runner.time, "monotonic", lambda: 1003.25)  # the run started at 1000.0: 3.25 s ago
    store = StateStore(tmp_path / "state")
    store.save(DOMAIN, issued(failures=failures(-1)))
    config = {"state_root": str(tmp_path / "state"), "metrics_dir": str(tmp_path / "metrics"), "node": "edge-7"}
    results = [{"domain": DOMAIN, "action": "failed"}, {"domain": "b.customer.com", "action": "renewed"}]
    runner.write_metrics(config, results, 1000.0, "failure")
    families = parse((tmp_path / "metrics" / "linkcert-run-timer.prom").read_text())
    assert value(families, "linkcert_run_success", job="timer", node="edge-7") == 0
    assert value(families, "linkcert_run_duration_seconds", job="timer") == 3.25
    assert {s.labels["action"]: s.value for s in families["linkcert_run_certificates"].samples} == {
        "issued": 0, "renewed": 1, "failed": 1, "none": 0}
    domains = parse((tmp_path / "metrics" / "linkcert-domains.prom").read_text())
    assert value(domains, "linkcert_certificate_consecutive_failures", domain=DOMAIN, node="edge-7") == 1
    runner.write_metrics(dict(config, metrics_dir=""), results, 0.0, "success")  # disabled: nothing written, nothing said
    (tmp_path / "blocked").write_text("x")
    runner.write_metrics(dict(config, metrics_dir=str(tmp_path / "blocked")), results, 0.0, "success")
    assert "cannot write the metrics" in capsys.readouterr().err
