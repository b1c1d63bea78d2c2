# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""State files, locks across processes, account records and the failed-validation ledger."""

from __future__ import annotations

import datetime
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_state as state_mod
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import (
    MAX_FAILURES_KEPT, StateStore, guard_until, iso, parse_iso, recent_failures, record_failure)
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError

DOMAIN = "links.customer.com"
UTC = datetime.timezone.utc
NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)


def minutes(n: float) -> datetime.timedelta:
    return datetime.timedelta(minutes=n)


# ---------------------------------------------------------------- iso / parse_iso

@pytest.mark.parametrize("text, expected", [
    ("2025-03-01T12:00:00Z", NOW),
    ("2025-03-01T12:00:00+00:00", NOW),
    ("2025-03-01T13:30:00+01:30", NOW),
    ("2025-03-01T07:00:00-05:00", NOW),
    ("2025-03-01T12:00:00", NOW),
    ("2025-03-01t12:00:00z", NOW),
    ("2025-03-01T12:00:00.5Z", NOW + datetime.timedelta(microseconds=500000)),
    ("2025-03-01T12:00:00.123456789Z", NOW + datetime.timedelta(microseconds=123456)),
])
def test_parse_iso(text: str, expected: datetime.datetime) -> None:
    parsed = parse_iso(text)
    assert parsed == expected
    assert parsed.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "2025-03-01", "2025-13-01T00:00:00Z", "2025-03-01T12:00:00+1"])
def test_parse_iso_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso(text)


@pytest.mark.parametrize("value, expected", [
    (NOW, "2025-03-01T12:00:00Z"),
    (datetime.datetime(2025, 3, 1, 13, 0, tzinfo=datetime.timezone(HOUR)), "2025-03-01T12:00:00Z"),
    (datetime.datetime(2025, 3, 1, 12, 0), "2025-03-01T12:00:00Z"),
    (NOW + datetime.timedelta(microseconds=250), "2025-03-01T12:00:00.000250Z"),
])
def test_iso(value: datetime.datetime, expected: str) -> None:
    assert iso(value) == expected
    assert parse_iso(iso(value)) == value.replace(tzinfo=value.tzinfo or UTC)


# ---------------------------------------------------------------- StateStore files

def test_root_created_on_first_write_only(tmp_path: Path) -> None:
    root = tmp_path / "a" / "state"
    store = StateStore(root)
    assert store.load(DOMAIN) == {} and not root.exists(), "reading (check mode) creates nothing"
    store.save(DOMAIN, {"x": 1})
    assert root.is_dir()
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, "state files name paths and accounts: root only"
    assert stat.S_IMODE(os.stat(root.parent).st_mode) != 0o700, "only the root itself is made private"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _take_lock(store: StateStore) -> None:
    with store.lock(DOMAIN, 0):
        pass


@pytest.mark.parametrize("write", [
    pytest.param(lambda store: store.save(DOMAIN, {"x": 1}), id="save"),
    pytest.param(_take_lock, id="lock"),
    pytest.param(lambda store: store.save_account("https://ca/dir", {"uri": "https://ca/acct/1"}), id="save_account"),
])
def test_a_looser_root_is_made_private_by_any_write(tmp_path: Path, write: t.Callable[[StateStore], t.Any]) -> None:
    """A state root an earlier release created 0755 (or an admin opened up) is 0700 again after the next write."""
    root = tmp_path / "state"
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "old.example.com.json").write_text("{}")
    os.chmod(root / "old.example.com.json", 0o644)
    write(StateStore(root))
    assert mode_of(root) == 0o700


def test_reading_leaves_the_root_mode_alone(tmp_path: Path) -> None:
    """Check mode and status reads only read: the mode of an existing root is not touched."""
    root = tmp_path / "state"
    StateStore(root).save(DOMAIN, {"x": 1})
    os.chmod(root, 0o755)
    store = StateStore(root)
    assert store.load(DOMAIN) == {"x": 1} and store.domains() == [DOMAIN] and store.load_account("https://ca/dir") is None
    assert mode_of(root) == 0o755


def test_state_files_account_records_and_locks_are_root_only(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    with store.lock(DOMAIN, 0):
        store.save(DOMAIN, {"x": 1})
    store.save_account("https://ca/dir", {"uri": "https://ca/acct/1"})
    found = {str(path.relative_to(store.root)): mode_of(path) for path in sorted(store.root.rglob("*"))}
    assert found == {".locks": 0o700, ".locks/%s.lock" % DOMAIN: 0o600, "accounts": 0o700,
                     "accounts/%s" % os.listdir(store.root / "accounts")[0]: 0o600, "%s.json" % DOMAIN: 0o600}


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load(DOMAIN) == {}
    store.save(DOMAIN, {"issued": NOW, "names": [DOMAIN], "nested": {"at": NOW + HOUR}, "serial": "0a"})
    path = store.path(DOMAIN)
    assert path == tmp_path / ("%s.json" % DOMAIN)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    loaded = store.load(DOMAIN)
    assert loaded == {"issued": "2025-03-01T12:00:00Z", "names": [DOMAIN], "nested": {"at": "2025-03-01T13:00:00Z"}, "serial": "0a"}
    assert parse_iso(loaded["issued"]) == NOW
    assert sorted(os.listdir(tmp_path)) == ["%s.json" % DOMAIN]


def test_save_rejects_unserialisable(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        StateStore(tmp_path).save(DOMAIN, {"x": object()})
    assert not (tmp_path / ("%s.json" % DOMAIN)).exists()


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\xff\xfe\x00", b'"string"'])
def test_corrupt_state_set_aside(tmp_path: Path, content: bytes) -> None:
    store = StateStore(tmp_path)
    store.path(DOMAIN).write_bytes(content)
    assert store.load(DOMAIN) == {}
    assert not store.path(DOMAIN).exists()
    corrupt = [p for p in tmp_path.iterdir() if p.name.startswith("%s.json.corrupt-" % DOMAIN)]
    assert len(corrupt) == 1
    assert corrupt[0].read_bytes() == content
    store.save(DOMAIN, {"ok": True})
    assert store.load(DOMAIN) == {"ok": True}


@pytest.mark.parametrize("domain", ["../x", "a/b", ".locks", ""])
def test_bad_domain_rejected(tmp_path: Path, domain: str) -> None:
    store = StateStore(tmp_path / "state")
    for call in (lambda: store.path(domain), lambda: store.load(domain), lambda: store.save(domain, {})):
        with pytest.raises(LinkcertError) as info:
            call()
        assert info.value.reason == "invalid_input"
    with pytest.raises(LinkcertError) as info:
        with store.lock(domain, 0.1):
            pass
    assert info.value.reason == "invalid_input"
    assert not (tmp_path / "x").exists()


def test_accounts(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    production = "https://acme-v02.api.letsencrypt.org/directory"
    assert store.load_account(staging) is None
    record = {"directory": staging, "uri": "https://ca/acct/1", "thumbprint": "abc", "created": NOW}
    store.save_account(staging, record)
    assert store.load_account(staging) == dict(record, created="2025-03-01T12:00:00Z")
    assert store.load_account(production) is None
    files = list((tmp_path / "accounts").iterdir())
    assert [p.name for p in files] == [state_mod.hashlib.sha256(staging.encode()).hexdigest()[:16] + ".json"]
    store.save_account(production, {"uri": "https://ca/acct/2", "thumbprint": "def", "created": "2025-01-01T00:00:00Z"})
    assert store.load_account(production)["directory"] == production
    files[0].write_text("{broken")
    assert store.load_account(staging) is None


# ---------------------------------------------------------------- locks

HOLDER = textwrap.dedent("""
    import sys
    from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore
    with StateStore(sys.argv[1]).lock(sys.argv[2], 5):
        print("held", flush=True)
        sys.stdin.read()
""")


def start_holder(root: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), DOMAIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "held":
        proc.kill()
        proc.wait()
        pytest.fail("lock holder did not start: %r" % line)
    return proc


def test_lock_free(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.lock(DOMAIN, 0):
        pass
    with store.lock(DOMAIN, 0):  # released after the block
        pass
    assert stat.S_IMODE(os.stat(tmp_path / ".locks").st_mode) == 0o700


def test_lock_released_on_exception(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.lock(DOMAIN, 0):
            raise RuntimeError("boom")
    with store.lock(DOMAIN, 0):
        pass


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_lock_held_by_other_process(tmp_path: Path, ending: str) -> None:
    store = StateStore(tmp_path)
    holder = start_holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(LinkcertError) as info:
            with store.lock(DOMAIN, 0.2):
                pytest.fail("lock taken while another process holds it")
        waited = time.monotonic() - started
        assert info.value.reason == "locked"
        assert info.value.item == DOMAIN
        assert "another run holds the lock" in info.value.msg
        assert str(holder.pid) in info.value.msg
        assert waited >= 0.2, "gave up before its timeout"
        with store.lock("other.example", 0):  # other domains are independent
            pass
    finally:
        if ending == "sigkill":
            os.kill(holder.pid, signal.SIGKILL)
        elif holder.stdin:
            holder.stdin.close()
        holder.wait(10)
        if holder.stdout:
            holder.stdout.close()
    if ending == "sigkill":
        assert holder.returncode == -signal.SIGKILL
    with store.lock(DOMAIN, 0.2):
        pass


def test_lock_waits_for_release(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    holder = start_holder(tmp_path)
    killer = threading.Timer(0.3, os.kill, args=(holder.pid, signal.SIGKILL))
    try:
        killer.start()
        started = time.monotonic()
        with store.lock(DOMAIN, 5):  # polled until the killed holder's lock is gone
            assert time.monotonic() - started >= 0.25
    finally:
        killer.cancel()
        holder.kill()
        holder.wait(10)
        for stream in (holder.stdout, holder.stdin):
            if stream:
                stream.close()


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore
    store = StateStore(sys.argv[1])
    with store.lock(sys.argv[2], 5):
        # killed in the middle of the save: the temporary file is written, not yet renamed over the state file
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        store.save(sys.argv[2], {"ssl_status": "issued", "serial": "02"})
""")


def test_lock_after_a_killed_save_removes_its_temporary_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.lock(DOMAIN, 0):
        store.save(DOMAIN, {"ssl_status": "issued", "serial": "01"})
    lock_file = tmp_path / ".locks" / ("%s.lock" % DOMAIN)
    assert lock_file.read_bytes() == b"", "a holder that is done clears its process id"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path), DOMAIN], env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".%s.json.tmp-" % DOMAIN)]
    assert len(left) == 1 and lock_file.read_bytes().strip().isdigit()
    other = tmp_path / ".www.links.customer.com.json.tmp-abcd"  # another domain's: not this lock's business
    other.write_text("{}")
    assert store.load(DOMAIN) == {"ssl_status": "issued", "serial": "01"}, "the state file is untouched"

    with store.lock(DOMAIN, 0):
        assert not (tmp_path / left[0]).exists()
        assert lock_file.read_bytes().strip() == str(os.getpid()).encode()
    assert other.exists()
    assert lock_file.read_bytes() == b""
    assert store.load(DOMAIN) == {"ssl_status": "issued", "serial": "01"}


# ---------------------------------------------------------------- ledger

def ledger(*ages_in_minutes: float, reason: str = "unauthorized") -> t.Dict[str, t.Any]:
    state: t.Dict[str, t.Any] = {"other": "kept"}
    for age in ages_in_minutes:
        state = record_failure(state, NOW - minutes(age), reason, "validation failed %s" % age)
    return state


@pytest.mark.parametrize("ages, expected", [
    ((), None),
    ((50, 40, 30, 20), None),
    ((50, 40, 30, 20, 10), NOW - minutes(50) + HOUR),
    ((10, 20, 30, 40, 50), NOW - minutes(50) + HOUR),  # recorded out of order
    ((59, 50, 40, 30, 20, 10), NOW - minutes(50) + HOUR),  # the newest five count
    ((90, 70, 40, 30, 20, 10), None),  # older than the window: ignored
    ((60, 40, 30, 20, 10), None),  # exactly one window old: no longer counts
    ((61, 62, 63, 64, 65), None),
    ((0, 1, 2, 3, 4), NOW - minutes(4) + HOUR),
])
def test_guard_until(ages: t.Tuple[float, ...], expected: t.Optional[datetime.datetime]) -> None:
    state = ledger(*ages)
    assert guard_until(state, NOW) == expected
    if expected is not None:
        assert expected > NOW
        # at the returned time the guard is lifted
        assert guard_until(state, expected) is None


def test_guard_until_threshold_window_and_reasons() -> None:
    state = ledger(50, 40, reason="connection")
    for age in (30, 20, 10):
        state = record_failure(state, NOW - minutes(age), "unauthorized", "404")
    assert guard_until(state, NOW) == NOW - minutes(50) + HOUR
    assert guard_until(state, NOW, reasons={"unauthorized"}) is None
    assert guard_until(state, NOW, threshold=3, reasons={"unauthorized"}) == NOW - minutes(30) + HOUR
    assert guard_until(state, NOW, window=minutes(35)) is None
    assert guard_until(state, NOW, threshold=2, window=minutes(35)) == NOW - minutes(20) + minutes(35)


def test_recent_failures() -> None:
    state = ledger(120, 45, 5)
    recent = recent_failures(state, NOW)
    assert [r["at"] for r in recent] == [iso(NOW - minutes(45)), iso(NOW - minutes(5))]
    assert recent[0] == {"at": iso(NOW - minutes(45)), "reason": "unauthorized", "message": "validation failed 45"}
    assert recent_failures(state, NOW, reasons={"dns"}) == []
    assert len(recent_failures(state, NOW, window=datetime.timedelta(hours=3))) == 3
    naive_now = NOW.replace(tzinfo=None)
    assert recent_failures(state, naive_now) == recent


def test_record_failure_is_pure_and_capped() -> None:
    original = {"other": "kept"}
    state = record_failure(original, NOW, "dns", "NXDOMAIN")
    assert original == {"other": "kept"}
    assert state == {"other": "kept", "failures": [{"at": "2025-03-01T12:00:00Z", "reason": "dns", "message": "NXDOMAIN"}]}
    for n in range(1, 30):
        state = record_failure(state, NOW + minutes(n), "dns", "failure %d" % n)
    assert len(state["failures"]) == MAX_FAILURES_KEPT
    assert state["failures"][-1]["message"] == "failure 29"
    assert state["failures"][0]["message"] == "failure %d" % (30 - MAX_FAILURES_KEPT)
    # an old failure recorded late does not push out newer ones
    state = record_failure(state, NOW - HOUR, "dns", "late")
    assert "late" not in [f["message"] for f in state["failures"]]
    assert len(state["failures"]) == MAX_FAILURES_KEPT


def test_ledger_tolerates_malformed_entries() -> None:
    state = {"failures": ["junk", {"at": "not a date"}, {"reason": "x"}, {"at": iso(NOW - minutes(1)), "reason": "dns", "message": "m"}]}
    assert len(recent_failures(state, NOW)) == 1
    assert guard_until(state, NOW, threshold=1) == NOW - minutes(1) + HOUR
    assert record_failure(state, NOW, "dns", "n")["failures"] == [
        {"at": iso(NOW - minutes(1)), "reason": "dns", "message": "m"}, {"at": iso(NOW), "reason": "dns", "message": "n"}]


def test_ledger_survives_save_and_load(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DOMAIN, ledger(50, 40, 30, 20, 10))
    assert guard_until(store.load(DOMAIN), NOW) == NOW - minutes(50) + HOUR
