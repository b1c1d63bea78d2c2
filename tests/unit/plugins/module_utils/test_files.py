# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Batched file writes (edge_files): input checks, what is planned, what is written, and what is undone."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _files
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

NOBODY = 65534


def run(entries: t.List[t.Dict[str, t.Any]], validate: t.Optional[t.List[str]] = None, check: bool = False) -> t.List[_files.Change]:
    """What the module does: check, plan, apply, validate."""
    changes = _files.plan(_files.parse_entries(entries))
    batch = _files.Batch(changes)
    if batch.changes and not check:
        batch.apply()
        if validate:
            batch.validate(validate, run_command)
    return [change for change in changes if change.what]


def run_command(argv: t.List[str]) -> t.Tuple[int, str, str]:
    """What AnsibleModule.run_command(argv, expand_user_and_vars=False, handle_exceptions=False) does for the batch."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


BAD_ENTRIES = [
    ({"path": "etc/nginx.conf", "content": "x"}, "files[0].path must be an absolute path"),
    ({"path": "/etc/../shadow", "content": "x"}, "files[0].path must be an absolute path"),
    ({"path": "/etc/nginx/", "state": "directory"}, "files[0].path must be an absolute path"),
    ({"path": "//etc/x", "content": "x"}, "files[0].path must be an absolute path"),
    ({"path": "/", "state": "directory"}, "files[0].path must be an absolute path"),
    ({"path": "/etc/a\nb", "content": "x"}, "files[0].path must not hold NUL or newline"),
    ({"path": "", "content": "x"}, "files[0].path must be a non-empty path"),
    ({"path": "/etc/x", "state": "link"}, "files[0].state must be one of file, directory, absent"),
    ({"path": "/etc/x"}, "files[0] (/etc/x): a file needs content or content_b64"),
    ({"path": "/etc/x", "state": "directory", "content": "x"}, "content is only for state=file"),
    ({"path": "/etc/x", "content": "x", "content_b64": "eA=="}, "give content or content_b64, not both"),
    ({"path": "/etc/x", "content_b64": "not base64!"}, "files[0].content_b64 is not valid base64"),
    ({"path": "/etc/x", "content": "x", "mode": 420}, "files[0].mode must be an octal string"),
    ({"path": "/etc/x", "content": "x", "mode": "0999"}, "files[0].mode must be an octal string"),
    ({"path": "/etc/x", "content": "x", "mode": "u=rw"}, "files[0].mode must be an octal string"),
    ({"path": "/etc/x", "content": "x", "owner": "no-such-user-linkcert"}, "files[0].owner: no user 'no-such-user-linkcert'"),
    ({"path": "/etc/x", "content": "x", "group": "no-such-group-linkcert"}, "files[0].group: no group 'no-such-group-linkcert'"),
    ("not a dict", "files[0] must be a dictionary"),
]


@pytest.mark.parametrize("entry, message", BAD_ENTRIES)
def test_bad_entry_is_named_before_anything_is_touched(tmp_path: Path, entry: t.Any, message: str) -> None:
    good = {"path": str(tmp_path / "written-first"), "content": "x"}
    with pytest.raises(InputError) as caught:
        _files.parse_entries([entry, good] if isinstance(entry, str) else [entry])
    assert message in str(caught.value)
    with pytest.raises(InputError):
        _files.parse_entries([good, entry] if not isinstance(entry, str) else [entry])
    assert not (tmp_path / "written-first").exists()


def test_a_path_listed_twice_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "x")
    with pytest.raises(InputError, match="files\\[1\\].path .* is listed twice"):
        _files.parse_entries([{"path": path, "content": "a"}, {"path": path, "content": "b"}])


def test_first_run_creates_second_run_changes_nothing(tmp_path: Path) -> None:
    entries = [
        {"path": str(tmp_path / "a" / "b"), "state": "directory", "mode": "0750"},
        {"path": str(tmp_path / "a" / "b" / "site.conf"), "content": "server {}\n", "mode": "0640", "owner": "root", "group": "0"},
        {"path": str(tmp_path / "a" / "b" / "app.pyz"), "content_b64": base64.b64encode(b"PK\x00\x01").decode()},
        {"path": str(tmp_path / "gone"), "state": "absent"},
    ]
    first = run(entries)
    assert [(c.entry.path, c.what) for c in first] == [
        (entries[0]["path"], ["created"]), (entries[1]["path"], ["created"]), (entries[2]["path"], ["created"])]
    assert mode_of(tmp_path / "a" / "b") == 0o750 and mode_of(tmp_path / "a") == 0o755
    assert (tmp_path / "a" / "b" / "site.conf").read_text() == "server {}\n"
    assert mode_of(tmp_path / "a" / "b" / "site.conf") == 0o640
    assert (tmp_path / "a" / "b" / "app.pyz").read_bytes() == b"PK\x00\x01"
    assert mode_of(tmp_path / "a" / "b" / "app.pyz") == 0o644
    assert run(entries) == []
    assert not [name for name in os.listdir(tmp_path / "a" / "b") if ".tmp-" in name]


CHANGES = [
    # (before: content, mode), wanted entry, expected change list
    (("old\n", 0o644), {"content": "new\n"}, ["content"]),
    (("same\n", 0o644), {"content": "same\n", "mode": "0600"}, ["mode"]),
    (("same\n", 0o600), {"content": "same\n"}, []),
    (("old\n", 0o600), {"content": "new\n", "mode": "0644"}, ["content", "mode"]),
    (("same\n", 0o644), {"content": "same\n", "owner": str(NOBODY)}, ["owner"]),
    (("same\n", 0o644), {"content": "same\n", "group": str(NOBODY)}, ["owner"]),
]


@pytest.mark.parametrize("before, wanted, expected", CHANGES)
def test_only_what_differs_is_changed(tmp_path: Path, before: t.Tuple[str, int], wanted: t.Dict[str, t.Any], expected: t.List[str]) -> None:
    path = tmp_path / "f"
    path.write_text(before[0])
    os.chmod(path, before[1])
    changes = run([dict(wanted, path=str(path))])
    assert (changes[0].what if changes else []) == expected
    assert path.read_text() == wanted["content"]
    assert mode_of(path) == (int(wanted["mode"], 8) if "mode" in wanted else before[1])
    if "owner" in wanted:
        assert os.stat(path).st_uid == NOBODY
    if "group" in wanted:
        assert os.stat(path).st_gid == NOBODY
    assert run([dict(wanted, path=str(path))]) == []


def test_check_mode_plans_without_writing(tmp_path: Path) -> None:
    entries = [{"path": str(tmp_path / "d"), "state": "directory"}, {"path": str(tmp_path / "d" / "f"), "content": "x"}]
    changes = run(entries, check=True)
    assert [c.what for c in changes] == [["created"], ["created"]]
    assert not (tmp_path / "d").exists()


def test_a_file_whose_directory_is_missing_and_not_listed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LinkcertError, match="its directory .*/missing does not exist"):
        run([{"path": str(tmp_path / "missing" / "f"), "content": "x"}])
    assert not (tmp_path / "missing").exists()


def test_absent_removes_files_and_links_but_never_a_directory(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("t")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "plain").write_text("p")
    (tmp_path / "dir").mkdir()
    changes = run([{"path": str(tmp_path / "link"), "state": "absent"}, {"path": str(tmp_path / "plain"), "state": "absent"}])
    assert [c.what for c in changes] == [["removed"], ["removed"]]
    assert not os.path.lexists(tmp_path / "link") and not (tmp_path / "plain").exists() and (tmp_path / "target").exists()
    with pytest.raises(LinkcertError, match="refusing to remove .*dir: it is a directory"):
        run([{"path": str(tmp_path / "dir"), "state": "absent"}])
    assert (tmp_path / "dir").is_dir()


def test_a_symlink_is_replaced_by_a_file_not_followed(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("keep")
    (tmp_path / "conf").symlink_to(tmp_path / "target")
    run([{"path": str(tmp_path / "conf"), "content": "new"}])
    assert not (tmp_path / "conf").is_symlink() and (tmp_path / "conf").read_text() == "new"
    assert (tmp_path / "target").read_text() == "keep"


def prepare_existing(tmp_path: Path) -> t.Tuple[t.List[t.Dict[str, t.Any]], t.Dict[str, t.Any]]:
    """A host with an old configuration, and a new set of entries that changes all of it."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "old.conf").write_text("old\n")
    os.chmod(tmp_path / "conf" / "old.conf", 0o640)
    os.chown(tmp_path / "conf" / "old.conf", NOBODY, NOBODY)
    (tmp_path / "conf" / "tight.conf").write_text("tight\n")
    os.chmod(tmp_path / "conf" / "tight.conf", 0o600)
    (tmp_path / "default-target").write_text("default site\n")
    (tmp_path / "conf" / "default").symlink_to(tmp_path / "default-target")
    entries = [
        {"path": str(tmp_path / "conf" / "new.d" / "deep"), "state": "directory"},
        {"path": str(tmp_path / "conf" / "old.conf"), "content": "replaced\n", "mode": "0644", "owner": "0", "group": "0"},
        {"path": str(tmp_path / "conf" / "tight.conf"), "content": "tight\n", "mode": "0644"},
        {"path": str(tmp_path / "conf" / "default"), "state": "absent"},
        {"path": str(tmp_path / "conf" / "new.d" / "deep" / "added.conf"), "content": "added\n"},
    ]
    before = {
        "old": ((tmp_path / "conf" / "old.conf").read_text(), mode_of(tmp_path / "conf" / "old.conf"), NOBODY),
        "tight": mode_of(tmp_path / "conf" / "tight.conf"),
    }
    return entries, before


def assert_back_as_before(tmp_path: Path, before: t.Dict[str, t.Any]) -> None:
    old = tmp_path / "conf" / "old.conf"
    assert (old.read_text(), mode_of(old), os.stat(old).st_uid) == before["old"]
    assert mode_of(tmp_path / "conf" / "tight.conf") == before["tight"]
    assert os.readlink(tmp_path / "conf" / "default") == str(tmp_path / "default-target")
    assert not (tmp_path / "conf" / "new.d").exists()
    assert sorted(os.listdir(tmp_path / "conf")) == ["default", "old.conf", "tight.conf"]


def test_a_failed_validation_puts_every_previous_file_back(tmp_path: Path) -> None:
    entries, before = prepare_existing(tmp_path)
    seen = tmp_path / "seen-by-validator"
    # The validator sees the new set (it is in place when it runs), then rejects it.
    script = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); print('emerg: bad directive', file=sys.stderr); sys.exit(1)"
    with pytest.raises(LinkcertError) as caught:
        run(entries, validate=[sys.executable, "-c", script, str(tmp_path / "conf" / "old.conf"), str(seen)])
    assert seen.read_text() == "replaced\n"
    assert caught.value.reason == "validate_failed"
    assert "previous ones are back in place" in caught.value.msg and "emerg: bad directive" in caught.value.msg
    assert caught.value.details["restored"] is True and caught.value.details["rc"] == 1
    assert_back_as_before(tmp_path, before)


def test_a_validator_that_cannot_run_counts_as_a_failure(tmp_path: Path) -> None:
    entries, before = prepare_existing(tmp_path)
    with pytest.raises(LinkcertError, match="rejected the new files"):
        run(entries, validate=[str(tmp_path / "no-such-validator")])
    assert_back_as_before(tmp_path, before)


def test_an_entry_that_cannot_be_written_stops_the_batch_before_any_change(tmp_path: Path) -> None:
    entries, before = prepare_existing(tmp_path)
    (tmp_path / "blocker").write_text("a file where a directory is wanted")
    entries.append({"path": str(tmp_path / "blocker" / "x"), "content": "y"})
    with pytest.raises(LinkcertError, match="blocker/x: Not a directory"):
        run(entries)
    assert_back_as_before(tmp_path, before)


def test_a_write_failing_during_apply_undoes_the_earlier_ones(tmp_path: Path) -> None:
    entries, before = prepare_existing(tmp_path)
    changes = _files.plan(_files.parse_entries(entries))
    # The last entry's directory disappears between plan and apply (another process, a full disk...).
    changes.append(_files.Change(_files.Entry(path=str(tmp_path / "vanished" / "f"), content=b"x"), what=["created"]))
    batch = _files.Batch(changes)
    with pytest.raises(LinkcertError) as caught:
        batch.apply()
    assert caught.value.reason == "write_failed" and "vanished" in caught.value.msg
    assert_back_as_before(tmp_path, before)


def test_diffs_show_text_changes_but_never_secrets_or_binaries(tmp_path: Path) -> None:
    (tmp_path / "site.conf").write_text("a\n")
    (tmp_path / "secret.json").write_text("{}")
    changes = _files.plan(_files.parse_entries([
        {"path": str(tmp_path / "site.conf"), "content": "b\n"},
        {"path": str(tmp_path / "secret.json"), "content": '{"hmac": "s3cret"}', "secret": True},
        {"path": str(tmp_path / "bin"), "content_b64": base64.b64encode(b"\x00\x01").decode()},
        {"path": str(tmp_path / "dir"), "state": "directory"},
    ]))
    diffs = _files.diffs(changes)
    assert diffs == [{"before_header": str(tmp_path / "site.conf"), "after_header": str(tmp_path / "site.conf"),
                      "before": "a\n", "after": "b\n"}]
    assert "s3cret" not in repr(_files.report(changes))
    assert [line["changes"] for line in _files.report(changes)] == [["content"], ["content"], ["created"], ["created"]]
