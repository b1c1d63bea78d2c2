# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Token files: where they go, and the sweep of tokens that killed runs left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_challenge as challenge
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError

NOW = 2_000_000_000.0
TOKEN = "Zm9vYmFyYmF6cXV4LWxlZnQtYmVoaW5k"
HOUR = 3600.0


def folder(webroot: Path) -> Path:
    path = webroot / ".well-known" / "acme-challenge"
    path.mkdir(parents=True, exist_ok=True)
    return path


def aged(path: Path, age: float) -> Path:
    os.utime(path, (NOW - age, NOW - age), follow_symlinks=False)
    return path


@pytest.mark.parametrize("make, age, removed", [
    pytest.param(lambda d: challenge.publish(d.parent.parent, TOKEN, TOKEN + ".thumb"), 3 * HOUR, True, id="stale token"),
    pytest.param(lambda d: challenge.publish(d.parent.parent, TOKEN, TOKEN + ".thumb"), 1 * HOUR, False, id="token of a live run"),
    pytest.param(lambda d: challenge.publish(d.parent.parent, TOKEN, TOKEN + ".thumb"), challenge.STALE_AFTER - 1, False, id="just under"),
    pytest.param(lambda d: (d / "index.html").write_text("x") and d / "index.html", 30 * 24 * HOUR, False, id="not a token name"),
    pytest.param(lambda d: (d / "short").write_text("x") and d / "short", 30 * 24 * HOUR, False, id="too short for a token"),
    pytest.param(lambda d: (d / TOKEN).mkdir() or d / TOKEN, 30 * 24 * HOUR, False, id="directory with a token name"),
    pytest.param(lambda d: (d / TOKEN).symlink_to("/etc/hostname") or d / TOKEN, 30 * 24 * HOUR, False, id="link with a token name"),
])
def test_sweep_removes_only_stale_token_files(tmp_path, make, age, removed):
    path = aged(make(folder(tmp_path)), age)
    assert challenge.sweep(tmp_path, NOW) == ([path.name] if removed else [])
    assert os.path.lexists(path) is not removed
    assert Path("/etc/hostname").exists()


def test_sweep_without_a_challenge_folder_does_nothing(tmp_path):
    assert challenge.sweep(tmp_path, NOW) == []
    assert list(tmp_path.iterdir()) == []


def test_sweep_keeps_fresh_tokens_next_to_stale_ones(tmp_path):
    stale = aged(challenge.publish(tmp_path, TOKEN, TOKEN + ".t"), 5 * HOUR)
    fresh = challenge.publish(tmp_path, TOKEN[::-1], TOKEN[::-1] + ".t")
    os.utime(fresh, (NOW, NOW))
    assert challenge.sweep(tmp_path, NOW) == [stale.name]
    assert fresh.read_text() == TOKEN[::-1] + ".t"


@pytest.mark.parametrize("token", ["../../etc/passwd", "a" * 15, "tok/en" + "a" * 20, "tok en" + "a" * 20, ""])
def test_token_path_refuses_what_is_not_base64url(tmp_path, token):
    with pytest.raises(LinkcertError) as caught:
        challenge.token_path(tmp_path, token)
    assert caught.value.reason == "ca_protocol_error"
