# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""When the renewal timer asks DNS again for a domain."""

from __future__ import annotations

import datetime
import os
import stat

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _drift

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
ISSUED = {"ssl_status": "issued", "reason": "not_due", "renew_after": "2027-01-30T00:00:00Z"}

# case, last checked, state → ask again
CASES = [
    ("never-checked", None, ISSUED, True),
    ("checked-an-hour-ago", NOW - HOUR, ISSUED, False),
    ("checked-a-day-ago", NOW - 24 * HOUR, ISSUED, True),
    ("just-under-the-interval", NOW - 19 * HOUR, ISSUED, False),
    ("due", NOW - HOUR, dict(ISSUED, renew_after="2026-12-01T11:00:00Z"), True),
    ("due-within-the-hour", NOW - HOUR, dict(ISSUED, renew_after="2026-12-01T12:30:00Z"), True),
    ("no-renew-after", NOW - HOUR, {"ssl_status": "issued", "reason": "not_due"}, True),
    ("drifted", NOW - HOUR, dict(ISSUED, ssl_status="pending", reason="dns_drift"), True),
    ("lookup-failed-still-issued", NOW - HOUR, dict(ISSUED, reason="caa_dns_error"), True),
]


@pytest.mark.parametrize("case, checked, state, expected", CASES, ids=[c[0] for c in CASES])
def test_needs_check(case, checked, state, expected):
    assert _drift.needs_check(checked, state, NOW) is expected


def test_record_merges_and_is_private(tmp_path):
    _drift.record_checked(str(tmp_path), ["a.c.com", "b.c.com"], NOW - HOUR)
    _drift.record_checked(str(tmp_path), ["b.c.com"], NOW)
    assert _drift.load_checked(str(tmp_path)) == {"a.c.com": NOW - HOUR, "b.c.com": NOW}
    path = tmp_path / _drift.CHECKED_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.name.startswith(".")


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"a.c.com": "yesterday"}'])
def test_an_unreadable_record_means_check_everything(tmp_path, content):
    (tmp_path / _drift.CHECKED_FILE).write_text(content)
    assert _drift.load_checked(str(tmp_path)) == {}
