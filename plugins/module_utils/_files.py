# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""A host's configuration files as one batch: check everything, write what differs, validate, or undo.

The roles used to spend one Ansible task (one remote round trip) per file, directory and check.
Here a whole set (for example nginx's challenge server, its webroot and the removal of the default
site) is one call:

1. ``parse_entries`` checks every entry (absolute clean path, state, content, mode, owner and group
   that exist) before anything is touched: a bad entry is an error naming ``files[N].field``.
2. ``plan`` compares each entry with the disk and lists what differs (nothing is written).
3. ``apply`` makes the changes in order: directories created, files written to a temporary name in
   the same directory and renamed over the target, files removed. It records how to undo each step.
4. ``validate`` (for example ``nginx -t``) runs once after the writes; if it fails, or a write fails
   half-way, every step is undone in reverse order, so the host is left with its previous files.
"""

from __future__ import annotations

import base64
import binascii
import grp
import os
import pwd
import stat
import typing as t
from dataclasses import dataclass, field

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write, os_error_text
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError, short_error

STATES = ("file", "directory", "absent")
DIFF_LIMIT = 256 * 1024  # larger files (or binary ones) are reported as changed without a text diff
Runner = t.Callable[[t.List[str]], t.Tuple[int, str, str]]  # argv -> (rc, stdout, stderr); AnsibleModule.run_command


@dataclass
class Entry:
    """One wanted file system object."""

    path: str
    state: str = "file"
    content: t.Optional[bytes] = None
    mode: t.Optional[int] = None
    uid: int = -1
    gid: int = -1
    secret: bool = False


@dataclass
class Change:
    """What differs between an entry and the disk (``what`` empty: nothing to do)."""

    entry: Entry
    what: t.List[str] = field(default_factory=list)
    before: t.Optional[bytes] = None  # the file's content (or a symlink's target) before, for undo and diff
    before_link: bool = False
    before_mode: t.Optional[int] = None
    before_uid: int = -1
    before_gid: int = -1


def _mode(value: t.Any, where: str) -> t.Optional[int]:
    if value is None:
        return None
    text = str(value) if isinstance(value, str) else None
    if text is None or not text or len(text) > 4 or any(char not in "01234567" for char in text):
        raise InputError("%s must be an octal string such as '0644', got %r" % (where, value), item=where)
    return int(text, 8)


def _account_id(value: t.Any, where: str, kind: str) -> int:
    """A user (``kind`` "user") or group name, or a numeric id, as a number; -1 when not given."""
    if value in (None, ""):
        return -1
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid if kind == "user" else grp.getgrnam(text).gr_gid
    except KeyError:
        raise InputError("%s: no %s %r on this host" % (where, kind, text), item=where) from None


def _path(value: t.Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError("%s must be a non-empty path" % where, item=where)
    if "\x00" in value or "\n" in value:
        raise InputError("%s must not hold NUL or newline characters" % where, item=where)
    if not value.startswith("/") or value == "/" or os.path.normpath(value) != value or value.startswith("//"):
        raise InputError("%s must be an absolute path without '.', '..', '//' or a trailing '/', got %r" % (where, value), item=where)
    return value


def _content(raw: t.Mapping[str, t.Any], where: str) -> t.Optional[bytes]:
    text, b64 = raw.get("content"), raw.get("content_b64")
    if text is not None and b64 is not None:
        raise InputError("%s: give content or content_b64, not both" % where, item=where)
    if b64 is not None:
        try:
            return base64.b64decode(str(b64), validate=True)
        except (binascii.Error, ValueError):
            raise InputError("%s.content_b64 is not valid base64" % where, item=where) from None
    if text is not None:
        return str(text).encode("utf-8")
    return None


def parse_entries(raw_entries: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[Entry]:
    """Check every entry and resolve owners and groups; raises InputError naming the first bad field."""
    entries: t.List[Entry] = []
    seen: t.Set[str] = set()
    for index, raw in enumerate(raw_entries):
        where = "files[%d]" % index
        if not isinstance(raw, t.Mapping):
            raise InputError("%s must be a dictionary" % where, item=where)
        path = _path(raw.get("path"), where + ".path")
        if path in seen:
            raise InputError("%s.path %s is listed twice" % (where, path), item=path)
        seen.add(path)
        state = raw.get("state") or "file"
        if state not in STATES:
            raise InputError("%s.state must be one of %s, got %r" % (where, ", ".join(STATES), state), item=path)
        content = _content(raw, where)
        if state == "file" and content is None:
            raise InputError("%s (%s): a file needs content or content_b64" % (where, path), item=path)
        if state != "file" and content is not None:
            raise InputError("%s (%s): content is only for state=file" % (where, path), item=path)
        entries.append(Entry(path=path, state=state, content=content, mode=_mode(raw.get("mode"), where + ".mode"),
                             uid=_account_id(raw.get("owner"), where + ".owner", "user"),
                             gid=_account_id(raw.get("group"), where + ".group", "group"),
                             secret=bool(raw.get("secret"))))
    return entries


def _lstat(path: str) -> t.Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _attr_changes(entry: Entry, info: os.stat_result, change: Change) -> None:
    change.before_mode, change.before_uid, change.before_gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
    if entry.mode is not None and stat.S_IMODE(info.st_mode) != entry.mode:
        change.what.append("mode")
    if (entry.uid != -1 and info.st_uid != entry.uid) or (entry.gid != -1 and info.st_gid != entry.gid):
        change.what.append("owner")


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def plan(entries: t.Sequence[Entry]) -> t.List[Change]:
    """Compare each entry with the disk; nothing is written. Raises LinkcertError for what cannot be done."""
    changes: t.List[Change] = []
    will_exist: t.Set[str] = set()
    for entry in entries:
        change = Change(entry)
        try:
            info = _lstat(entry.path)
            parent = os.path.dirname(entry.path)
            if entry.state != "absent" and info is None and entry.state == "file" and not os.path.isdir(parent) \
                    and parent not in will_exist:
                raise LinkcertError("cannot write %s: its directory %s does not exist (list it first with state: directory)"
                                    % (entry.path, parent), item=entry.path, reason="invalid_input")
            if entry.state == "directory":
                if info is not None and not stat.S_ISDIR(info.st_mode):
                    raise LinkcertError("%s exists and is not a directory" % entry.path, item=entry.path, reason="invalid_input")
                if info is None:
                    change.what.append("created")
                else:
                    _attr_changes(entry, info, change)
                will_exist.add(entry.path)
            elif entry.state == "absent":
                if info is not None:
                    if stat.S_ISDIR(info.st_mode):
                        raise LinkcertError("refusing to remove %s: it is a directory" % entry.path, item=entry.path,
                                            reason="invalid_input")
                    change.before_link = stat.S_ISLNK(info.st_mode)
                    change.before = os.readlink(entry.path).encode() if change.before_link else _read(entry.path)
                    change.before_mode, change.before_uid, change.before_gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
                    change.what.append("removed")
            else:
                if info is None:
                    change.what.append("created")
                elif stat.S_ISDIR(info.st_mode):
                    raise LinkcertError("cannot write %s: it is a directory" % entry.path, item=entry.path, reason="invalid_input")
                elif stat.S_ISLNK(info.st_mode):
                    change.before_link, change.before = True, os.readlink(entry.path).encode()
                    change.what.append("content")
                else:
                    change.before = _read(entry.path)
                    if change.before != entry.content:
                        change.what.append("content")
                    _attr_changes(entry, info, change)
        except OSError as exc:
            raise LinkcertError("cannot inspect %s: %s" % (entry.path, os_error_text(exc)), item=entry.path, reason="read_failed") from exc
        changes.append(change)
    return changes


class Batch:
    """Applies planned changes in order and can undo them in reverse order."""

    def __init__(self, changes: t.Sequence[Change]) -> None:
        self.changes = [change for change in changes if change.what]
        self._undo: t.List[t.Callable[[], None]] = []

    def apply(self) -> None:
        """Make every change; on the first failure undo the ones made and raise LinkcertError(reason="write_failed")."""
        try:
            for change in self.changes:
                self._apply_one(change)
        except Exception as exc:
            problems = self.undo()
            failure = exc if isinstance(exc, LinkcertError) else LinkcertError(short_error(exc), reason="write_failed")
            if problems:
                failure.msg += "; undoing the earlier changes also failed: " + "; ".join(problems)
                failure.args = (failure.msg,)
            raise failure from exc

    def _apply_one(self, change: Change) -> None:
        entry = change.entry
        try:
            if entry.state == "directory":
                self._directory(change)
            elif entry.state == "absent":
                os.unlink(entry.path)
                self._undo.append(lambda: _restore(change))
            elif "created" in change.what or "content" in change.what:
                atomic_write(entry.path, entry.content or b"", self._file_mode(change), entry.uid, entry.gid)
                self._undo.append((lambda: os.unlink(entry.path)) if "created" in change.what else (lambda: _restore(change)))
            else:
                self._attributes(change)
        except LinkcertError:
            raise
        except OSError as exc:
            raise LinkcertError("cannot change %s: %s" % (entry.path, os_error_text(exc)), item=entry.path,
                                reason="write_failed") from exc

    @staticmethod
    def _file_mode(change: Change) -> int:
        if change.entry.mode is not None:
            return change.entry.mode
        return change.before_mode if change.before_mode is not None and not change.before_link else 0o644

    def _directory(self, change: Change) -> None:
        entry = change.entry
        if "created" in change.what:
            made: t.List[str] = []
            path = entry.path
            while not os.path.isdir(path):
                made.append(path)
                path = os.path.dirname(path)
            for path in reversed(made):
                os.mkdir(path, 0o755)
                self._undo.append(lambda path=path: os.rmdir(path))
            os.chmod(entry.path, entry.mode if entry.mode is not None else 0o755)
            if entry.uid != -1 or entry.gid != -1:
                os.chown(entry.path, entry.uid, entry.gid)
        else:
            self._attributes(change)

    def _attributes(self, change: Change) -> None:
        entry = change.entry
        if "mode" in change.what and entry.mode is not None:
            os.chmod(entry.path, entry.mode)
            self._undo.append(lambda: os.chmod(entry.path, change.before_mode))
        if "owner" in change.what:
            os.chown(entry.path, entry.uid, entry.gid)
            self._undo.append(lambda: os.chown(entry.path, change.before_uid, change.before_gid))

    def undo(self) -> t.List[str]:
        """Undo every applied step, newest first; returns what could not be undone (empty: all of it)."""
        problems = []
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except Exception as exc:  # keep undoing the rest; report every failure
                problems.append(short_error(exc))
        return problems

    def validate(self, argv: t.Sequence[str], run: Runner) -> None:
        """Run ``argv`` with ``run``; if it fails, undo every change and raise LinkcertError(reason="validate_failed")."""
        try:
            rc, out, err = run(list(argv))
        except OSError as exc:
            rc, out, err = -1, "", os_error_text(exc)
        if rc == 0:
            return
        problems = self.undo()
        command = " ".join(argv)
        command = command if len(command) <= 120 else command[:117] + "..."
        said = (err.strip() or out.strip() or "no output")[-2000:]
        if problems:
            message = "%s rejected the new files (exit %s) and restoring the previous ones failed: %s; it said: %s" % (
                command, rc, "; ".join(problems), said)
        else:
            message = "%s rejected the new files (exit %s), so the previous ones are back in place: %s" % (command, rc, said)
        raise LinkcertError(message, item=argv[0] if argv else None, reason="validate_failed",
                            details={"rc": rc, "stdout": out, "stderr": err, "restored": not problems})


def _restore(change: Change) -> None:
    entry = change.entry
    if change.before_link:
        temp = entry.path + ".linkcert-restore"
        if os.path.lexists(temp):
            os.unlink(temp)
        os.symlink((change.before or b"").decode(), temp)
        os.replace(temp, entry.path)
    else:
        atomic_write(entry.path, change.before or b"", change.before_mode if change.before_mode is not None else 0o644,
                     change.before_uid, change.before_gid)


def _text(data: t.Optional[bytes]) -> t.Optional[str]:
    if data is None:
        return ""
    if len(data) > DIFF_LIMIT or b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def diffs(changes: t.Sequence[Change]) -> t.List[t.Dict[str, str]]:
    """Ansible ``diff`` entries for content changes of text files not marked secret."""
    found = []
    for change in changes:
        entry = change.entry
        if entry.secret or not ({"created", "content", "removed"} & set(change.what)) or entry.state == "directory":
            continue
        before = "" if "created" in change.what else (None if change.before_link else _text(change.before))
        after = "" if entry.state == "absent" else _text(entry.content)
        if before is None or after is None:
            continue
        found.append({"before_header": entry.path, "after_header": entry.path, "before": before, "after": after})
    return found


def report(changes: t.Sequence[Change]) -> t.List[t.Dict[str, t.Any]]:
    """One line per entry: path, state, whether it changed and how."""
    return [{"path": change.entry.path, "state": change.entry.state, "changed": bool(change.what), "changes": list(change.what)}
            for change in changes]
