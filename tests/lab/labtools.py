"""Helpers for integration tests: run Ansible as users run it, and parse what it prints.

Modules are exercised through the ``ansible`` / ``ansible-playbook`` commands of the
virtual environment running pytest, so the py311 run tests ansible-core 2.19 and the
py313 run the newest ansible-core.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COLLECTIONS = REPO / ".work" / "collections"


def _ensure_collection_link() -> None:
    link = COLLECTIONS / "ansible_collections" / "mailops" / "linkcert"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../../.."))


def ansible_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    _ensure_collection_link()
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_HOME": str(REPO / ".work" / "ansible-home"),
        "PATH": "%s:%s" % (BIN, env.get("PATH", "")),
    })
    env.update(extra or {})
    return env


class ModuleRun:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        match = re.search(r"^localhost \| (\w+!?) => (\{.*\})\s*$", proc.stdout, re.S | re.M)
        if not match:
            raise AssertionError("no module result in ansible output:\n%s\n%s" % (proc.stdout, proc.stderr))
        self.state = match.group(1)
        self.result: Dict[str, Any] = json.loads(match.group(2))

    def by(self, key: str) -> Dict[str, Dict[str, Any]]:
        return {r[key]: r for r in self.result["results"]}


def acme_args(lab: Any, cert_root: Any, state_root: Any, certificates: Any, **extra: Any) -> Dict[str, Any]:
    """acme_http01_cert arguments for a lab: its CA, trust, webroot, validation port and DNS."""
    env = lab.env()
    args = {"certificates": certificates, "acme_directory": env["LINKCERT_LAB_ACME_DIRECTORY"], "acme_ca_bundle": env["LINKCERT_LAB_CA_BUNDLE"],
            "terms_agreed": True, "account_email": "ops@linkcert.example", "webroot": env["LINKCERT_LAB_WEBROOT"],
            "cert_root": str(cert_root), "state_root": str(state_root), "challenge_port": int(env["LINKCERT_LAB_HTTP_PORT"]),
            "resolvers": [env["LINKCERT_LAB_RESOLVER"]], "timeout": 60}
    args.update(extra)
    return args


def run_module(module: str, args: Dict[str, Any], check: bool = False, timeout: int = 300, verbosity: int = 0) -> ModuleRun:
    """``ansible localhost -m mailops.linkcert.MODULE -a JSON``, as a user types it."""
    cmd = [str(BIN / "ansible"), "localhost", "-m", "mailops.linkcert." + module, "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-c", "local"]
    if check:
        cmd.append("--check")
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    env = ansible_env({"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    return ModuleRun(proc)


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.recap: Dict[str, Dict[str, int]] = {}
        for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", proc.stdout, re.M):
            self.recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}

    def total(self, key: str) -> int:
        return sum(counts.get(key, 0) for counts in self.recap.values())


def run_playbook(playbook: str, inventory: str, extra_vars: Optional[Dict[str, Any]] = None, check: bool = False,
                 env: Optional[Dict[str, str]] = None, timeout: int = 600, verbosity: int = 0) -> PlaybookRun:
    cmd = [str(BIN / "ansible-playbook"), "-i", str(REPO / inventory), str(REPO / playbook)]
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, env=ansible_env(env), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    return PlaybookRun(proc)
