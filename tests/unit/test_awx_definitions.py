# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The AWX job templates shipped as examples (docs/awx/) name what this repository has."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "docs" / "awx" / "linkcert-job-templates.json"


def templates():
    return {jt["name"]: jt for jt in json.loads(EXPORT.read_text())["job_templates"]}


def test_every_template_runs_a_playbook_of_this_repository():
    found = templates()
    assert sorted(found) == ["linkcert onboard", "linkcert renew", "linkcert verify now"]
    for name, jt in found.items():
        assert (REPO / jt["playbook"]).is_file(), name
        assert jt["job_type"] == "run" and jt["natural_key"]["name"] == name
        assert jt["related"]["credentials"] and jt["execution_environment"]["name"] == "linkcert-ee"


def test_verify_now_asks_for_the_domain_the_playbook_reads():
    jt = templates()["linkcert verify now"]
    assert jt["survey_enabled"] is True
    (question,) = jt["related"]["survey_spec"]["spec"]
    assert (question["variable"], question["type"], question["required"]) == ("domain", "text", True)
    assert question["max"] == 253  # the longest host name
    playbook = (REPO / jt["playbook"]).read_text()
    assert "domain | mailops.linkcert.domain_name('-e domain')" in playbook and "certificate_watch_reset" in playbook


def test_schedules_start_off_the_hour_and_the_watch_schedule_is_opt_in():
    schedules = {s["name"]: s for s in templates()["linkcert renew"]["related"]["schedules"]}
    for name, schedule in schedules.items():
        start = re.match(r"^DTSTART;TZID=UTC:\d{8}T\d{2}(\d{2})\d{2} RRULE:FREQ=(HOURLY|MINUTELY);INTERVAL=\d+$", schedule["rrule"])
        assert start and start.group(1) != "00", name
        assert schedule["unified_job_template"]["name"] == "linkcert renew"
    assert schedules["linkcert renew, twice a day"]["enabled"] is True
    assert schedules["linkcert watch, every 5 minutes"]["enabled"] is False
