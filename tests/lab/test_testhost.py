"""Integration tests for scripts/testhost.py: a Debian 12 test host with systemd as PID 1.

Boots real instances through the CLI (systemd-nspawn on the cached debootstrap root under
``.work/testhost``; the first run builds that root, which takes about a minute). Needs root,
systemd-nspawn, debootstrap and network access to the Debian mirror for that first build.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional

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
#: Where `testhost.py link` takes its /30s from (the first /30 of each /24 is an instance subnet).
LINK_POOL = ipaddress.ip_network("198.19.128.0/17")
#: Route types `ip route show` writes before the destination.
ROUTE_TYPES = ("unicast", "local", "broadcast", "multicast", "anycast", "unreachable", "blackhole", "prohibit", "throw",
               "nat")


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


def ip(*args: str, netns: Optional[str] = None) -> str:
    """``ip ARGS`` in this machine's namespace, or in ``netns``."""
    argv = [shutil.which("ip", path=SBIN_PATH) or "ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                          check=True).stdout


def link_ifnames(netns: Optional[str] = None) -> List[str]:
    """Names of the `testhost.py link` interfaces (``lk-...``) in a namespace (default: this machine's)."""
    names = [line.split(": ", 2)[1].split("@")[0] for line in ip("-o", "link", "show", netns=netns).splitlines()]
    return [name for name in names if name.startswith("lk-")]


def link_records(info: Dict[str, str]) -> Dict[str, Dict[str, str]]:
    path = Path(info["dir"], "links.json")
    return json.loads(path.read_text()) if path.exists() else {}


def ssh_banner_via(name: str, addr: str) -> subprocess.CompletedProcess:
    """From inside test host ``name``, the first 4 bytes that port 22 of ``addr`` sends (the root has no ping)."""
    return cli("exec", name, "--", "timeout", "10", "bash", "-c", f"exec 3<>/dev/tcp/{addr}/22 && head -c 4 <&3",
               check=False)


def ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


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
    assert isinstance(entry["linkcert_lab_links"], dict)


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


@pytest.fixture(scope="module")
def peer_name(host: Dict[str, str]) -> Iterator[str]:
    """Name of the module's second instance (booted by `peer` on first use)."""
    name = f"{host['name']}-b"
    cli("down", name)
    yield name
    cli("down", name)


@pytest.fixture
def peer(peer_name: str) -> Dict[str, str]:
    """The module's second instance: booted on first use, and again if a test removed it."""
    info = status(peer_name)
    if info.get("state") != "running":
        cli("up", peer_name)
        info = status(peer_name)
    info["name"] = peer_name
    assert info["state"] == "running"
    return info


@pytest.fixture
def linked(host: Dict[str, str], peer: Dict[str, str]) -> Dict[str, str]:
    """``link host peer`` (made, or left as it is); returns host's record of the link."""
    forward = ip_forward()
    addr = cli("link", host["name"], peer["name"]).stdout.strip()
    record = link_records(host)[peer["name"]]
    assert record["peer_addr"] == addr, "link prints the peer's address as seen from the first host"
    assert ip_forward() == forward, "linking must not turn on forwarding"
    return record


def test_link_reaches_peer_directly(host: Dict[str, str], peer: Dict[str, str], linked: Dict[str, str]) -> None:
    """Each host reaches the other's SSH at its link address, over the link's own interface."""
    subnet = ipaddress.ip_network(linked["subnet"])
    assert subnet.prefixlen == 30 and subnet.subnet_of(LINK_POOL)
    assert [str(addr) for addr in subnet.hosts()] == [linked["local_addr"], linked["peer_addr"]]
    for instance_subnet in (host["subnet"], peer["subnet"]):
        assert not subnet.overlaps(ipaddress.ip_network(instance_subnet))
    ifname = linked["ifname"]
    assert ifname.startswith("lk-") and len(ifname) <= 15
    assert link_records(peer)[host["name"]] == {"local_addr": linked["peer_addr"], "peer_addr": linked["local_addr"],
                                                "subnet": linked["subnet"], "ifname": ifname}
    assert ifname in link_ifnames(host["netns"]) and ifname in link_ifnames(peer["netns"])
    route = cli("exec", host["name"], "--", "ip", "-4", "route", "get", linked["peer_addr"]).stdout
    assert f"dev {ifname}" in route and " via " not in route
    for name, addr in ((host["name"], linked["peer_addr"]), (peer["name"], linked["local_addr"])):
        proc = ssh_banner_via(name, addr)
        assert proc.returncode == 0 and proc.stdout == "SSH-", f"{name} -> {addr}: {proc.stdout!r} {proc.stderr}"


def test_link_is_isolated_from_this_machine(linked: Dict[str, str]) -> None:
    """Nothing of the link is in this machine's namespace, and it has no route to the link's subnet.

    Only `ip route get` asks: nothing is sent, since this machine's route for the subnet leads out of it.
    """
    subnet = ipaddress.ip_network(linked["subnet"])
    assert link_ifnames() == [], "a link interface in this machine's namespace"
    assert not Path("/sys/class/net", linked["ifname"]).exists()
    for line in ip("-4", "-o", "addr", "show").splitlines():
        words = line.split()
        assert not ipaddress.ip_interface(words[words.index("inet") + 1]).network.overlaps(subnet), line
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        words = line.split()
        dest = words[1] if words[0] in ROUTE_TYPES else words[0]
        if dest != "default":
            assert not ipaddress.ip_network(dest, strict=False).overlaps(subnet), line
    for addr in (linked["local_addr"], linked["peer_addr"]):
        route = subprocess.run([shutil.which("ip", path=SBIN_PATH) or "ip", "-4", "route", "get", addr],
                               capture_output=True, text=True, timeout=30, check=False).stdout
        assert "lk-" not in route and "lch-" not in route and not route.startswith("local"), route


def test_link_is_idempotent_and_listed(host: Dict[str, str], peer: Dict[str, str], linked: Dict[str, str]) -> None:
    files = [Path(info["dir"], "links.json") for info in (host, peer)]
    before = [path.read_text() for path in files]
    again = cli("link", host["name"], peer["name"])
    assert again.stdout.strip() == linked["peer_addr"]
    assert "already linked" in again.stderr
    # Either order names the same link; the address printed is the other host's.
    assert cli("link", peer["name"], host["name"]).stdout.strip() == linked["local_addr"]
    assert [path.read_text() for path in files] == before
    assert link_ifnames(peer["netns"]) == [linked["ifname"]]
    assert link_ifnames(host["netns"]).count(linked["ifname"]) == 1
    shown = json.loads(status(host["name"])["links"])[peer["name"]]
    assert shown == {**linked, "state": "up"}
    yaml = pytest.importorskip("yaml")
    for info, other, addr in ((host, peer, linked["peer_addr"]), (peer, host, linked["local_addr"])):
        entry = yaml.safe_load(cli("inventory", info["name"]).stdout)[info["name"]]
        assert entry["linkcert_lab_links"] == {other["name"]: addr}
        assert entry["ansible_host"] == info["ansible_host"]


def test_link_needs_both_hosts_up(host: Dict[str, str]) -> None:
    absent = f"{host['name']}-absent"
    proc = cli("link", host["name"], absent, check=False)
    assert proc.returncode == 1
    assert f"test host {absent} is not up" in proc.stderr
    assert absent not in link_records(host)
    assert not Path(host["dir"]).with_name(absent).exists()
    assert cli("link", host["name"], host["name"], check=False).returncode == 1


def test_unlink_removes_both_ends(host: Dict[str, str], peer: Dict[str, str], linked: Dict[str, str]) -> None:
    cli("unlink", host["name"], peer["name"])
    assert linked["ifname"] not in link_ifnames(host["netns"])
    assert linked["ifname"] not in link_ifnames(peer["netns"])
    assert peer["name"] not in link_records(host) and host["name"] not in link_records(peer)
    again = cli("unlink", peer["name"], host["name"])
    assert "were not linked" in again.stderr
    assert peer["name"] not in json.loads(status(host["name"])["links"])
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(cli("inventory", host["name"]).stdout)[host["name"]]["linkcert_lab_links"] == {}


def test_second_instance_and_down(host: Dict[str, str], peer: Dict[str, str], tmp_marker: Path) -> None:
    """Another instance gets another /30; `down` removes everything, its links too, and can be repeated."""
    name, info = peer["name"], peer
    assert info["subnet"] != host["subnet"]
    assert info["host_if"] != host["host_if"]
    assert ssh(info, "true").returncode == 0
    addr = cli("link", host["name"], name).stdout.strip()
    record = link_records(host)[name]
    cli("down", name)
    assert_gone(name, info)
    assert record["ifname"] not in link_ifnames(host["netns"]), "the link outlived its peer"
    assert name not in link_records(host)
    assert cli("down", name).returncode == 0
    assert tmp_marker.exists()
    # The first instance is unaffected, and linking to the removed one is refused.
    assert ssh(host, "true").returncode == 0
    assert cli("link", host["name"], name, check=False).returncode == 1
    # A record left behind by a peer that vanished without `down`: shown as missing; the host fixture's own
    # `down` (checked by assert_gone) must still work with it.
    Path(host["dir"], "links.json").write_text(json.dumps({name: record}))
    assert json.loads(status(host["name"])["links"])[name]["state"] == "missing"
    assert addr == record["peer_addr"]
