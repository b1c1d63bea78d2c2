"""The lab with an edge: a booted Debian 12 test host serving the customers' names, plus Pebble and DNS.

``make demo`` and the end-to-end tests use it so the roles run against a real systemd host with
its own nginx, and this machine's own nginx and ports 80/443 are never touched.

Usage (as root)::

    edgelab.py start [SEED.yml]   boot the edge test host, start the lab on the host end of its veth,
                                   publish SEED (default lab/demo-dns.yml) with {{ edge_addr }} = the edge
    edgelab.py stop               stop the lab and remove the edge test host (idempotent)
    edgelab.py status             show both

Settings (environment): ``LINKCERT_LAB_DIR`` (default ``.lab``), ``LINKCERT_LAB_EDGE_HOST`` (test host
name, default ``linkcert-demo``) and every ``LINKCERT_LAB_*`` / ``PEBBLE_*`` variable labctl reads, except
the addresses, which come from the edge's veth. Pebble validates on port 80 of the edge (its nginx), so
the lab runs no nginx of its own. ``LAB_DIR/edge.json`` records how Ansible reaches the edge;
``inventories/lab`` reads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import yaml

HERE = Path(__file__).resolve().parent
REPO_DIR = HERE.parent
TESTHOST = REPO_DIR / "scripts" / "testhost.py"
LABCTL = HERE / "labctl.py"
DEFAULT_SEED = HERE / "demo-dns.yml"
DEFAULT_EDGE = "linkcert-demo"


class EdgeLabError(Exception):
    """A step failed; the message says which."""


def settings(env: Mapping[str, str]) -> Dict[str, str]:
    """The lab directory and the edge's test host name."""
    lab_dir = env.get("LINKCERT_LAB_DIR", "").strip() or str(REPO_DIR / ".lab")
    edge = env.get("LINKCERT_LAB_EDGE_HOST", "").strip() or DEFAULT_EDGE
    return {"lab_dir": str(Path(lab_dir).resolve()), "edge": edge}


def _run(argv: Sequence[str], env: Optional[Mapping[str, str]] = None, capture: bool = False) -> str:
    proc = subprocess.run(list(argv), env=dict(env) if env is not None else None, text=True,
                          stdout=subprocess.PIPE if capture else None, check=False)
    if proc.returncode != 0:
        raise EdgeLabError(f"{Path(argv[1]).name} {' '.join(argv[2:])} failed (exit {proc.returncode})")
    return proc.stdout or ""


def lab_env(env: Mapping[str, str], edge: Mapping[str, str], lab_dir: str) -> Dict[str, str]:
    """labctl's environment: the caller's settings, with the addresses taken from the edge's veth."""
    out = dict(env)
    # Let's Encrypt's 90 days, unless the caller asks for another lifetime (seconds).
    if not out.get("LINKCERT_LAB_CERT_VALIDITY", "").strip():
        out["LINKCERT_LAB_CERT_VALIDITY"] = str(90 * 86400)
    out.update({
        "LINKCERT_LAB_DIR": lab_dir,
        "LINKCERT_LAB_ADDR": edge["linkcert_lab_host_addr"],
        "LINKCERT_LAB_EDGE_ADDR": edge["ansible_host"],
        "LINKCERT_LAB_NGINX": "0",
        "LINKCERT_LAB_HTTP_PORT": "80",
    })
    return out


def start(env: Mapping[str, str], seed: Path) -> Dict[str, str]:
    """Boot the edge, start the lab next to it, publish the DNS data; return the edge's inventory entry."""
    cfg = settings(env)
    py = sys.executable
    _run([py, str(TESTHOST), "root"])
    _run([py, str(TESTHOST), "up", cfg["edge"]])
    entry = yaml.safe_load(_run([py, str(TESTHOST), "inventory", cfg["edge"]], capture=True))[cfg["edge"]]
    Path(cfg["lab_dir"]).mkdir(parents=True, exist_ok=True)
    record = dict(entry, linkcert_lab_edge_host=cfg["edge"])
    tmp = Path(cfg["lab_dir"]) / "edge.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, Path(cfg["lab_dir"]) / "edge.json")
    labenv = lab_env(env, entry, cfg["lab_dir"])
    _run([py, str(LABCTL), "start"], env=labenv)
    _run([py, str(LABCTL), "seed", str(seed)], env=labenv)
    return record


def stop(env: Mapping[str, str]) -> None:
    """Stop the lab, then remove the edge (both idempotent)."""
    cfg = settings(env)
    py = sys.executable
    edge_file = Path(cfg["lab_dir"]) / "edge.json"
    edge = cfg["edge"]
    if edge_file.exists():
        edge = json.loads(edge_file.read_text()).get("linkcert_lab_edge_host", edge)
    if (Path(cfg["lab_dir"]) / "lab.env").exists():
        _run([py, str(LABCTL), "stop"], env=dict(env, LINKCERT_LAB_DIR=cfg["lab_dir"]))
    _run([py, str(TESTHOST), "down", edge])
    edge_file.unlink(missing_ok=True)


def status(env: Mapping[str, str]) -> int:
    cfg = settings(env)
    py = sys.executable
    rc_edge = subprocess.run([py, str(TESTHOST), "status", cfg["edge"]], check=False).returncode
    rc_lab = subprocess.run([py, str(LABCTL), "status"], env=dict(env, LINKCERT_LAB_DIR=cfg["lab_dir"]),
                            check=False).returncode
    return rc_edge or rc_lab


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("start", "stop", "status") or len(args) > 2:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    try:
        if args[0] == "start":
            edge = start(os.environ, Path(args[1]) if len(args) > 1 else DEFAULT_SEED)
            print(f"edge {edge['linkcert_lab_edge_host']} at {edge['ansible_host']}; "
                  f"lab on {edge['linkcert_lab_host_addr']}")
            return 0
        if args[0] == "stop":
            stop(os.environ)
            return 0
        return status(os.environ)
    except EdgeLabError as exc:
        print(f"edgelab: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
