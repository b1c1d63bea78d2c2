"""playbooks/onboard_domain.yml on the lab inventory, as ops run it."""

from __future__ import annotations

import re

import pytest
from labtools import REPO, run_playbook

pytestmark = [pytest.mark.lab, pytest.mark.integration]

PLAYBOOK = "playbooks/onboard_domain.yml"
INVENTORY = "inventories/lab"


@pytest.fixture(scope="module")
def lab_env(lab):
    lab.seed(str(REPO / "lab" / "demo-dns.yml"))
    return lab.env()


def table(stdout):
    """The status lines printed by the 'Show the status table' task."""
    section = stdout.split("TASK [Show the status table]", 1)[1].split("TASK [", 1)[0]
    return [line.strip() for line in section.splitlines() if "  SSL " in line]


def test_onboard_reports_each_domain_and_is_idempotent(lab_env):
    first = run_playbook(PLAYBOOK, INVENTORY, env=lab_env)
    assert first.rc == 0, first.stdout + first.stderr
    assert first.total("changed") == 0 and first.total("failed") == 0
    lines = table(first.stdout)
    assert len(lines) == 5, lines
    rows = {line.split()[0]: line for line in lines}
    assert re.search(r"links\.example\.com\s+SSL Pending\s+awaiting_issuance", rows["links.example.com"])
    assert "SSL Unknown" in rows["links.example.net"] and 'publish example.net. CAA 0 issue "letsencrypt.org"' in rows["links.example.net"]
    assert "SSL Unknown" in rows["click.example.org"] and "dns_not_ready" in rows["click.example.org"]
    assert "SSL Pending" in rows["em.example.com"]
    assert "SSL Unknown" in rows["em.example.net"] and "publish em.example.net. A 127.0.0.1" in rows["em.example.net"]

    second = run_playbook(PLAYBOOK, INVENTORY, env=lab_env)
    assert second.rc == 0 and second.total("changed") == 0
    assert table(second.stdout) == lines

    check = run_playbook(PLAYBOOK, INVENTORY, env=lab_env, check=True)
    assert check.rc == 0 and check.total("changed") == 0
    assert table(check.stdout) == lines


def test_verify_now_for_one_domain(lab_env):
    run = run_playbook(PLAYBOOK, INVENTORY, extra_vars={"domain": "Links.Example.NET."}, env=lab_env)
    assert run.rc == 0, run.stdout
    lines = table(run.stdout)
    assert len(lines) == 1 and lines[0].startswith("links.example.net") and "caa_blocked" in lines[0]


def test_fail_on_unknown(lab_env):
    run = run_playbook(PLAYBOOK, INVENTORY, extra_vars={"linkcert_fail_on": "unknown"}, env=lab_env)
    assert run.rc != 0
    assert "links.example.net" in run.stdout and "click.example.org" in run.stdout
    assert run.total("failed") == 1


def test_bad_domain_is_rejected_by_name(lab_env):
    run = run_playbook(PLAYBOOK, INVENTORY, extra_vars={"domain": "links.example.com; rm -rf /"}, env=lab_env)
    assert run.rc != 0
    assert "contains the character ';'" in run.stdout
