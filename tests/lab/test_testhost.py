"""Integration tests for scripts/testhost.py: a Debian 12 test host with systemd as PID 1.

Boots real instances through the CLI (systemd-nspawn on the cached debootstrap root under
``.work/testhost``; the first run builds that root, which takes about a minute). Needs root,
systemd-nspawn, debootstrap and network access to the Debian mirror for that first build.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTHOST = REPO / "scripts" / "testhost.py"
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="test hosts need Linux namespaces"),
    pytest.mark.skipif(os.geteuid() != 0, reason="test hosts need root"),
    pytest.mark.skipif(any(shutil.which(tool, path=SBIN_PATH) is None for tool in ("systemd-nspawn", "debootstrap")),
                       reason="systemd-nspawn or debootstrap missing"),
]

#: Generous: the first `up` of a machine builds the cached root (about a minute plus downloads).
CLI_TIMEOUT = 900


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run testhost.py with this interpreter (it is standard library only)."""
    proc = subprocess.run([sys.executable, str(TESTHOST), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"testhost.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def status(name: str) -> Dict[str, str]:
    out = cli("status", name, check=False).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def ssh(info: Dict[str, str], *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", "/dev/null", "-i", info["ssh_private_key_file"], "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"root@{info['ansible_host']}", *command],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def assert_gone(name: str, info: Dict[str, str]) -> None:
    """Everything `up` created for ``name`` is gone."""
    assert not Path("/run/netns", info["netns"]).exists(), "network namespace left behind"
    assert not Path("/sys/class/net", info["host_if"]).exists(), "host veth left behind"
    assert not Path(info["dir"]).exists(), "instance directory left behind"
    assert not pid_alive(int(info["nspawn_pid"])), "systemd-nspawn still runs"
    assert not pid_alive(int(info["init_pid"])), "the container's systemd still runs"
    assert status(name)["state"] == "absent"


@pytest.fixture(scope="module")
def tmp_marker() -> Iterator[Path]:
    """A file in the HOST's /tmp, made before any boot: systemd on the wrong root would wipe it."""
    fd, path = tempfile.mkstemp(prefix="linkcert-testhost-marker-", dir="/tmp")
    os.write(fd, b"keep me\n")
    os.close(fd)
    yield Path(path)
    Path(path).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def host(tmp_marker: Path) -> Iterator[Dict[str, str]]:
    """One booted instance for the module; `down` in teardown, checked to leave nothing behind."""
    name = f"pt-{os.getpid()}"
    cli("down", name)
    address = cli("up", name).stdout.strip()
    info = status(name)
    info["name"] = name
    assert info["state"] == "running"
    assert info["ansible_host"] == address
    try:
        yield info
    finally:
        cli("down", name)
        assert_gone(name, info)


def test_ssh_with_instance_key(host: Dict[str, str]) -> None:
    proc = ssh(host, "systemctl", "is-system-running")
    assert proc.stdout.strip() in ("running", "degraded"), proc.stderr


def test_systemd_is_pid_1(host: Dict[str, str]) -> None:
    proc = cli("exec", host["name"], "--", "cat", "/proc/1/comm")
    assert proc.stdout.strip() == "systemd"
    assert host["systemd"] in ("running", "degraded")


def test_exec_passes_exit_status(host: Dict[str, str]) -> None:
    assert cli("exec", host["name"], "--", "sh", "-c", "exit 7", check=False).returncode == 7


def test_host_tmp_untouched(host: Dict[str, str], tmp_marker: Path) -> None:
    assert tmp_marker.read_text() == "keep me\n"


def test_addresses_in_benchmark_range(host: Dict[str, str]) -> None:
    lab_addr, guest = host["linkcert_lab_host_addr"], host["ansible_host"]
    assert lab_addr.startswith(("198.18.", "198.19.")) and lab_addr.endswith(".1")
    assert guest == lab_addr[:-1] + "2"
    assert len(host["host_if"]) <= 15
    route = cli("exec", host["name"], "--", "ip", "-4", "route", "show", "default").stdout
    assert f"via {lab_addr}" in route


def test_inventory_entry(host: Dict[str, str]) -> None:
    yaml = pytest.importorskip("yaml")
    entry = yaml.safe_load(cli("inventory", host["name"]).stdout)[host["name"]]
    assert entry["ansible_host"] == host["ansible_host"]
    assert entry["ansible_user"] == "root"
    assert entry["ansible_python_interpreter"] == "/usr/bin/python3"
    assert entry["linkcert_lab_host_addr"] == host["linkcert_lab_host_addr"]
    assert Path(entry["ansible_ssh_private_key_file"]).is_file()
    assert "StrictHostKeyChecking=no" in entry["ansible_ssh_common_args"]


def test_guest_reaches_server_on_host_side_address(host: Dict[str, str]) -> None:
    """A server bound only to 198.18.X.1 (where the lab will listen) answers the guest."""

    class Handler(http.server.BaseHTTPRequestHandler):
        requests: List[str] = []

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            Handler.requests.append(self.client_address[0])
            body = b"hello from the host side\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer((host["linkcert_lab_host_addr"], 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{host['linkcert_lab_host_addr']}:{server.server_address[1]}/"
        proc = cli("exec", host["name"], "--", "curl", "-sS", "--max-time", "10", url, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from the host side\n"
    assert Handler.requests == [host["ansible_host"]]


def test_second_instance_and_down(host: Dict[str, str], tmp_marker: Path) -> None:
    """Another instance gets another /30; `down` removes everything and can be repeated."""
    name = f"{host['name']}-b"
    cli("up", name)
    info = status(name)
    try:
        assert info["state"] == "running"
        assert info["subnet"] != host["subnet"]
        assert info["host_if"] != host["host_if"]
        assert ssh(info, "true").returncode == 0
    finally:
        cli("down", name)
    assert_gone(name, info)
    assert cli("down", name).returncode == 0
    assert tmp_marker.exists()
    # The first instance is unaffected.
    assert ssh(host, "true").returncode == 0
