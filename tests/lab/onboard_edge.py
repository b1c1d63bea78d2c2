"""The booted lab edge that test_onboard_playbook.py and test_onboard_renewals.py each start for themselves
(lab/edgelab.py: Debian 12, systemd, nginx, with Pebble and DNS beside it), and the helpers both use: the first
onboarding run, the certificate served by SNI, a command on the edge, Pebble's order count and status.yml.
Two files, two edges: xdist runs them on two workers at once (the onboarding file alone was the suite's longest)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import labctl
import pytest
from labtools import REPO, run_playbook

PLAYBOOK = "playbooks/onboard_domain.yml"
INVENTORY = "inventories/lab"
EDGELAB = REPO / "lab" / "edgelab.py"
TESTHOST = REPO / "scripts" / "testhost.py"
GOOD = ("links.example.com", "em.example.com")


@pytest.fixture(scope="module")
def edge_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """The demo's lab on free ports in a directory of its own, with an edge named for this process."""
    lab_dir = tmp_path_factory.mktemp("edgelab")
    env = dict(os.environ, LINKCERT_LAB_DIR=str(lab_dir), LINKCERT_LAB_EDGE_HOST="pe-%d" % os.getpid(), PEBBLE_AUTHZREUSE="0")
    for var in ("ACME", "ACME_MGMT", "TLS", "DNS", "DNS_MGMT"):
        env["LINKCERT_LAB_%s_PORT" % var] = "auto"
    start = subprocess.run([sys.executable, str(EDGELAB), "start"], env=env, capture_output=True, text=True, check=False)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        info = json.loads((lab_dir / "lab.json").read_text())
        info["edge"] = json.loads((lab_dir / "edge.json").read_text())
        info["env"] = {"LINKCERT_LAB_DIR": str(lab_dir)}
        yield info
    finally:
        subprocess.run([sys.executable, str(EDGELAB), "stop"], env=env, check=False)
    assert not (lab_dir / "edge.json").exists()


@pytest.fixture(scope="module")
def pebble_root(edge_lab: Dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labctl.write_pebble_root(edge_lab, tmp_path_factory.mktemp("pebble") / "root.pem")


@pytest.fixture(scope="module")
def first_run(edge_lab: Dict[str, Any]):
    return run_playbook(PLAYBOOK, INVENTORY, env=edge_lab["env"])


def table(stdout: str) -> List[str]:
    """The status lines printed by the certificate role's report."""
    section = stdout.split("TASK [mailops.linkcert.certificate : Report every domain]", 1)[1].split("TASK [", 1)[0]
    return [line.strip() for line in section.splitlines() if "  SSL " in line]


def served(edge_lab: Dict[str, Any], pebble_root: Path, name: str) -> Dict[str, Any]:
    """The certificate the edge serves for NAME by SNI, verified against Pebble's root."""
    context = ssl.create_default_context(cafile=str(pebble_root))
    with socket.create_connection((edge_lab["edge"]["ansible_host"], 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert()


def on_edge(edge_lab: Dict[str, Any], command: str) -> str:
    proc = subprocess.run([sys.executable, str(TESTHOST), "exec", edge_lab["edge"]["linkcert_lab_edge_host"], "--", "sh", "-c", command],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# Not shorter than the demo's 90-day lifetime: every run renews.
DUE = {"certificate_renew_before": 90}


def orders_so_far(edge_lab: Dict[str, Any]) -> int:
    """New-order requests Pebble has logged."""
    return (Path(edge_lab["env"]["LINKCERT_LAB_DIR"]) / "log" / "pebble.log").read_text().count("/order-plz")


def nginx_workers(edge_lab: Dict[str, Any]) -> str:
    """nginx's master pid and its workers' pids, once nginx is settled: a reload replaces the workers. Workers of an
    earlier reload finish their connections first ("shutting down"), and right after a reload they may not say so yet;
    so this waits (bounded) until no worker is shutting down and two looks a second apart agree."""
    look = ("m=$(systemctl show -p MainPID --value nginx); echo $m; "
            "ps -o pid=,args= --ppid $m | awk '{print $1, ($0 ~ /shutting down/) ? \"old\" : \"current\"}' | sort -n")
    previous = None
    for _attempt in range(30):
        seen = on_edge(edge_lab, look)
        if "old" not in seen and seen == previous:
            return seen
        previous = seen
        time.sleep(1)
    pytest.fail("nginx did not settle (workers of an earlier reload still shutting down):\n%s" % previous)
    return ""


def run_status(edge_lab: Dict[str, Any], tmp_path: Path, **extra: Any):
    """status.yml into TMP_PATH; returns the run, the rows by domain and the page's text."""
    out, page = tmp_path / "status.json", tmp_path / "status.html"
    run = run_playbook("playbooks/status.yml", INVENTORY, extra_vars=dict({"linkcert_status_file": str(out), "linkcert_status_page": str(page)},
                                                                          **extra), env=edge_lab["env"])
    rows = {d["domain"]: d for d in json.loads(out.read_text())["edges"]["lab-edge"]} if out.exists() else {}
    return run, rows, page.read_text() if page.exists() else ""
