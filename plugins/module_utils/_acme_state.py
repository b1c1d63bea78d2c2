# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Per-domain ACME state, run locks, account records and the failed-validation ledger.

State is one JSON file per domain (ROOT/DOMAIN.json), written atomically; a
file that cannot be parsed is set aside and treated as empty, never fatal.
Runs for one domain are serialised with flock(2) on ROOT/.locks/DOMAIN.lock,
which the kernel releases when the holder exits however it exits.  The holder
writes its process id into the lock file and clears it when done; the state file
is only written under the lock, so whoever finds an id there (its holder was
killed) removes the temporary files a save killed half-way left behind.

The state root is private to root (0700, tightened on every write if it was created
looser) and state files are 0600: they name file paths and account records, and nginx
workers, which share the host, must not list or read them.

The ledger keeps the latest validation failures of a domain so that a run can
refuse to place an order that would hit the CA's failed-validation limit
(Let's Encrypt: 5 failures per name per hour).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import stat
import typing as t
from pathlib import Path

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import (
    TEMP_MARK, atomic_write, check_domain, domains_in, flock_within, lock_holder, os_error_text, set_lock_holder, utc_stamp)
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError

PathLike = t.Union[str, "os.PathLike[str]"]

ROOT_MODE = 0o700
PRIVATE_DIR_MODE = 0o700
STATE_MODE = 0o600
ACCOUNT_MODE = 0o600
LOCK_POLL_INTERVAL = 0.05
MAX_FAILURES_KEPT = 20
DEFAULT_WINDOW = datetime.timedelta(hours=1)

_UTC = datetime.timezone.utc
_ISO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$")


def iso(dt: datetime.datetime) -> str:
    """ISO 8601 in UTC with a 'Z' suffix (microseconds only when present). A naive datetime is taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    return dt.astimezone(_UTC).replace(tzinfo=None).isoformat() + "Z"


def parse_iso(text: str) -> datetime.datetime:
    """Parse an RFC 3339 / ISO 8601 date-time into an aware UTC datetime.

    Accepts 'Z' or a numeric offset (none means UTC) and any number of
    fractional digits (ACME servers send nanoseconds); raises ValueError otherwise.
    """
    match = _ISO_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not an ISO 8601 date-time: %r" % (text,))
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hours, off_minutes = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz = _UTC
    if sign and not zulu:
        offset = datetime.timedelta(hours=int(off_hours), minutes=int(off_minutes))
        tz = datetime.timezone(-offset if sign == "-" else offset)
    try:
        value = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
        return value.astimezone(_UTC)
    except (ValueError, OverflowError) as exc:  # a day or an hour out of range, or a year that leaves datetime's range in UTC
        raise ValueError("not a valid date-time: %r (%s)" % (text, exc)) from exc


def _json_default(value: t.Any) -> t.Any:
    if isinstance(value, datetime.datetime):
        return iso(value)
    raise TypeError("%s values cannot be stored in the state file" % type(value).__name__)


def _dumps(data: t.Mapping[str, t.Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, default=_json_default) + "\n").encode("utf-8")


def _make_dir(path: Path, mode: int, enforce: bool = False) -> None:
    """Create ``path`` with ``mode`` (parents as needed); with ``enforce`` also fix the mode of an existing one."""
    if not path.is_dir():
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)
    elif enforce and stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)


class StateStore:
    """JSON state files and locks under one root directory."""

    def __init__(self, root: PathLike) -> None:
        # Nothing is created here: reading (and check mode) must leave the file system alone.
        self.root = Path(root)

    def _ensure_root(self) -> None:
        """Create the root (0700), or make an existing one 0700 again (earlier releases created it 0755)."""
        try:
            _make_dir(self.root, ROOT_MODE, enforce=True)
        except OSError as exc:
            raise LinkcertError("cannot create the state directory %s: %s" % (self.root, os_error_text(exc)),
                                item=str(self.root), reason="write_failed") from exc

    def path(self, domain: str) -> Path:
        """ROOT/DOMAIN.json."""
        return self.root / ("%s.json" % check_domain(domain))

    def _read_json(self, path: Path) -> t.Optional[t.Dict[str, t.Any]]:
        """The object in ``path``; None if absent. A corrupt file is renamed to PATH.corrupt-<ts> and read as None."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LinkcertError("cannot read %s: %s" % (path, os_error_text(exc)), item=str(path), reason="read_failed") from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            data = None
        if isinstance(data, dict):
            return data
        try:
            os.rename(path, path.with_name("%s.corrupt-%s" % (path.name, utc_stamp())))
        except OSError:
            pass
        return None

    def domains(self) -> t.List[str]:
        """The domains with a state file, sorted."""
        return domains_in(self.root, suffix=".json")

    def load(self, domain: str) -> t.Dict[str, t.Any]:
        """The saved state of ``domain``; {} when there is none or it was unreadable (then set aside)."""
        return self._read_json(self.path(domain)) or {}

    def save(self, domain: str, state: t.Mapping[str, t.Any]) -> None:
        """Write the state of ``domain`` atomically (datetime values are stored as ISO 8601 UTC).

        Call it holding ``lock(domain)``: taking the lock removes temporary files of this domain's state file.
        """
        self._ensure_root()
        atomic_write(self.path(domain), _dumps(state), STATE_MODE)

    @contextlib.contextmanager
    def lock(self, domain: str, timeout: float) -> t.Iterator[None]:
        """Hold an exclusive lock for ``domain`` for the duration of the block.

        Polls every LOCK_POLL_INTERVAL seconds for up to ``timeout`` seconds,
        then raises LinkcertError(reason="locked"). The lock is released by
        the kernel when the holding process exits, so it never goes stale.
        """
        check_domain(domain)
        with self._lock("%s.lock" % domain, domain, timeout, domain):
            yield

    @contextlib.contextmanager
    def lock_edge(self, timeout: float) -> t.Iterator[None]:
        """Hold the edge's lock (its nginx files and their reload), as :meth:`lock` does for a domain."""
        with self._lock(".edge.lock", "the edge's nginx files", timeout, None):
            yield

    @contextlib.contextmanager
    def _lock(self, file_name: str, what: str, timeout: float, domain: t.Optional[str]) -> t.Iterator[None]:
        self._ensure_root()
        lock_dir = self.root / ".locks"
        lock_path = lock_dir / file_name
        item = domain or str(lock_path)
        try:
            _make_dir(lock_dir, PRIVATE_DIR_MODE)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise LinkcertError("cannot open the lock file %s: %s" % (lock_path, os_error_text(exc)), item=item, reason="lock_failed") from exc
        try:
            try:
                taken = flock_within(fd, timeout, LOCK_POLL_INTERVAL)
            except OSError as exc:
                raise LinkcertError("cannot lock %s: %s" % (lock_path, os_error_text(exc)), item=item, reason="lock_failed") from exc
            if not taken:
                holder = lock_holder(fd)
                raise LinkcertError("another run holds the lock for %s (%s%s); gave up after %.1f s"
                                    % (what, lock_path, ", process %s" % holder if holder else "", timeout),
                                    item=item, reason="locked")
            killed = bool(lock_holder(fd))
            set_lock_holder(fd, os.getpid())
            if killed and domain is not None:
                self._remove_leftovers(domain)
            try:
                yield
            finally:
                set_lock_holder(fd, None)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _remove_leftovers(self, domain: str) -> None:
        """Remove ROOT/.DOMAIN.json.tmp-* left by a save that was killed (best effort; called holding the lock)."""
        prefix = ".%s%s" % (self.path(domain).name, TEMP_MARK)
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(prefix) and not entry.is_dir(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    @contextlib.contextmanager
    def lock_named(self, file_name: str, what: str, timeout: float) -> t.Iterator[None]:
        """Hold ROOT/.locks/FILE_NAME, as :meth:`lock` does for a domain (``what`` names it in the error)."""
        with self._lock(file_name, what, timeout, None):
            yield

    def read_private(self, directory: str, file_name: str) -> t.Optional[t.Dict[str, t.Any]]:
        """The object in ROOT/DIRECTORY/FILE_NAME, as :meth:`load` reads a state file; None when absent or unreadable."""
        return self._read_json(self.root / directory / file_name)

    def write_private(self, directory: str, file_name: str, data: t.Mapping[str, t.Any], mode: int, directory_mode: int) -> None:
        """Write ROOT/DIRECTORY/FILE_NAME atomically with ``mode``, the directory created with ``directory_mode``."""
        path = self.root / directory / file_name
        self._ensure_root()
        try:
            _make_dir(path.parent, directory_mode)
        except OSError as exc:
            raise LinkcertError("cannot create %s: %s" % (path.parent, os_error_text(exc)), item=str(path.parent), reason="write_failed") from exc
        atomic_write(path, _dumps(data), mode)

    def _account_path(self, directory_url: str) -> Path:
        digest = hashlib.sha256(directory_url.encode("utf-8")).hexdigest()[:16]
        return self.root / "accounts" / ("%s.json" % digest)

    def load_account(self, directory_url: str) -> t.Optional[t.Dict[str, t.Any]]:
        """The account record {"directory", "uri", "thumbprint", "created"} for this ACME directory, or None."""
        data = self._read_json(self._account_path(directory_url))
        if data is None or data.get("directory", directory_url) != directory_url:
            return None
        return data

    def save_account(self, directory_url: str, data: t.Mapping[str, t.Any]) -> None:
        """Store the account record for this ACME directory ("directory" is filled in if missing)."""
        path = self._account_path(directory_url)
        record = dict(data)
        record.setdefault("directory", directory_url)
        self.write_private(path.parent.name, path.name, record, ACCOUNT_MODE, PRIVATE_DIR_MODE)


def _failures_with_times(state: t.Mapping[str, t.Any]) -> t.List[t.Tuple[datetime.datetime, t.Dict[str, t.Any]]]:
    """The ledger entries with their parsed times, oldest first; malformed entries are skipped."""
    entries = []
    for entry in state.get("failures") or []:
        if not isinstance(entry, dict):
            continue
        try:
            at = parse_iso(entry.get("at", ""))
        except ValueError:
            continue
        entries.append((at, entry))
    entries.sort(key=lambda pair: pair[0])
    return entries


def record_failure(state: t.Mapping[str, t.Any], at: datetime.datetime, reason: str, message: str) -> t.Dict[str, t.Any]:
    """A copy of ``state`` with this failure added to the ledger, which keeps the newest MAX_FAILURES_KEPT."""
    entry = {"at": iso(at), "reason": reason, "message": message}
    entries = [pair[1] for pair in _failures_with_times(state)]
    entries.append(entry)
    entries.sort(key=lambda item: parse_iso(item["at"]))
    new_state = dict(state)
    new_state["failures"] = entries[-MAX_FAILURES_KEPT:]
    return new_state


def recent_failures(state: t.Mapping[str, t.Any], now: datetime.datetime, window: datetime.timedelta = DEFAULT_WINDOW,
                    reasons: t.Optional[t.Collection[str]] = None) -> t.List[t.Dict[str, t.Any]]:
    """Ledger entries (of ``reasons``, default all) later than ``now - window``, oldest first."""
    since = _aware(now) - window
    return [entry for at, entry in _failures_with_times(state)
            if at > since and (reasons is None or entry.get("reason") in reasons)]


def guard_until(state: t.Mapping[str, t.Any], now: datetime.datetime, threshold: int = 5, window: datetime.timedelta = DEFAULT_WINDOW,
                reasons: t.Optional[t.Collection[str]] = None) -> t.Optional[datetime.datetime]:
    """When ``threshold`` failures fall within ``window`` before ``now``, the time a new order is safe again; else None.

    That time is the oldest of the newest ``threshold`` failures in the window, plus ``window``.
    """
    threshold = max(1, int(threshold))
    recent = recent_failures(state, now, window, reasons)
    if len(recent) < threshold:
        return None
    return parse_iso(recent[-threshold]["at"]) + window


def _aware(dt: datetime.datetime) -> datetime.datetime:
    return dt.replace(tzinfo=_UTC) if dt.tzinfo is None else dt.astimezone(_UTC)
