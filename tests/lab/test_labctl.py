"""Integration tests for lab/labctl.py (needs pebble, pebble-challtestsrv and nginx installed).

Every service runs on ports picked free at test time, with state under pytest's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

import labctl  # noqa: E402

dns_message = pytest.importorskip("dns.message")
dns_query = pytest.importorskip("dns.query")
dns_rdatatype = pytest.importorskip("dns.rdatatype")
dns_rcode = pytest.importorskip("dns.rcode")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the lab relies on /proc"),
    pytest.mark.skipif(any(shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
                           for b in labctl.SERVICES.values()), reason="pebble, pebble-challtestsrv or nginx missing"),
]

ADDR = "127.0.0.1"


def make_lab(lab_dir: Path, **kwargs: Any) -> labctl.Lab:
    """A lab on free ports with a short readiness deadline."""
    ports = dict(zip(labctl.PORT_KEYS, labctl.free_ports(len(labctl.PORT_KEYS), ADDR)))
    ports.update(kwargs.pop("ports", {}))
    return labctl.Lab(dir=lab_dir, addr=ADDR, ports=ports, nginx=True, timeout=20.0, **kwargs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labctl.Lab]:
    """One running lab shared by the read-mostly tests of this module."""
    instance = make_lab(tmp_path_factory.mktemp("lab"))
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def query(lab: labctl.Lab, name: str, rdtype: str) -> Any:
    """Ask the lab DNS directly, like `dig @ADDR -p PORT name rdtype`."""
    msg = dns_message.make_query(name, rdtype)
    return dns_query.udp(msg, lab.addr, port=lab.ports["dns"], timeout=3)


def answers(lab: labctl.Lab, name: str, rdtype: str) -> Dict[str, List[str]]:
    """Answer section as {TYPE: [rdata text, ...]}."""
    out: Dict[str, List[str]] = {}
    for rrset in query(lab, name, rdtype).answer:
        out.setdefault(dns_rdatatype.to_text(rrset.rdtype), []).extend(rd.to_text() for rd in rrset)
    return out


def http_get(url: str) -> Tuple[int, bytes, str]:
    """GET a URL, returning status, body and content type even for HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def alive(pid: int) -> bool:
    """True if /proc/PID exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


# --------------------------------------------------------------------------- ACME


def test_acme_directory_verified_with_lab_ca(lab: labctl.Lab) -> None:
    url = lab.env()["LINKCERT_LAB_ACME_DIRECTORY"]
    ctx = ssl.create_default_context(cafile=lab.env()["LINKCERT_LAB_CA_BUNDLE"])
    with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    assert '"newNonce"' in body and '"newOrder"' in body
    assert "newAccount" in lab.acme_directory()


def test_acme_directory_rejected_by_default_trust_store(lab: labctl.Lab) -> None:
    url = lab.env()["LINKCERT_LAB_ACME_DIRECTORY"]
    with pytest.raises(urllib.error.URLError) as exc:
        urllib.request.urlopen(url, timeout=5, context=ssl.create_default_context())
    assert isinstance(exc.value.reason, ssl.SSLCertVerificationError)


def test_lab_files(lab: labctl.Lab) -> None:
    assert (lab.dir / "ca" / "server.key").stat().st_mode & 0o777 == 0o600
    env_text = (lab.dir / "lab.env").read_text()
    for key in ("LINKCERT_LAB_ACME_DIRECTORY", "LINKCERT_LAB_CA_BUNDLE", "LINKCERT_LAB_RESOLVER",
                "LINKCERT_LAB_DNS_MGMT", "LINKCERT_LAB_WEBROOT", "LINKCERT_LAB_PEBBLE_MGMT", "LINKCERT_LAB_HTTP_PORT"):
        assert f"{key}=" in env_text
    assert f"LINKCERT_LAB_RESOLVER={ADDR}:{lab.ports['dns']}\n" in env_text
    config = (lab.dir / "pebble-config.json").read_text()
    assert f'"httpPort": {lab.ports["http"]}' in config


# --------------------------------------------------------------------------- DNS


def test_seed_demo_dns(lab: labctl.Lab) -> None:
    assert lab.seed(REPO / "lab" / "demo-dns.yml") > 0
    got = answers(lab, "links.example.com", "A")
    assert got["CNAME"] == ["edge.linkcert.example."]
    assert got["A"] == [ADDR]  # {{ lab_addr }} substituted
    assert answers(lab, "example.com", "CAA") == {"CAA": ['0 issue "letsencrypt.org"']}
    assert answers(lab, "example.net", "CAA") == {"CAA": ['0 issue "sectigo.com"']}
    assert answers(lab, "click.example.org", "A") == {"A": ["127.0.0.99"]}
    assert answers(lab, "em.example.com", "TXT") == {"TXT": ['"v=spf1 include:spf.linkcert.example ~all"']}
    assert answers(lab, "s1._domainkey.em.example.com", "CNAME") == {"CNAME": ["s1.dkim.linkcert.example."]}
    assert len(answers(lab, "em.example.net", "TXT")["TXT"]) == 2


def test_seed_placeholders_name_the_lab_and_the_edge(tmp_path: Path) -> None:
    values = {"lab_addr": "198.18.1.1", "edge_addr": "198.18.1.2"}
    got = labctl._substitute({"records": [{"a": ["{{ edge_addr }}", "{{lab_addr}}"], "txt": ["ip4:{{  edge_addr }} -all"]}]}, values)
    assert got == {"records": [{"a": ["198.18.1.2", "198.18.1.1"], "txt": ["ip4:198.18.1.2 -all"]}]}
    edge = labctl.Lab.from_env({"LINKCERT_LAB_DIR": str(tmp_path), "LINKCERT_LAB_ADDR": "198.18.1.1",
                                "LINKCERT_LAB_EDGE_ADDR": "198.18.1.2"})
    assert edge.placeholders == values and edge.env()["LINKCERT_LAB_EDGE_ADDR"] == "198.18.1.2"
    assert labctl.Lab.from_env({"LINKCERT_LAB_DIR": str(tmp_path)}).placeholders["edge_addr"] == "127.0.0.1"
    with pytest.raises(labctl.LabError, match="LINKCERT_LAB_EDGE_ADDR: 'edge; rm' is not an IP address"):
        labctl.Lab.from_env({"LINKCERT_LAB_DIR": str(tmp_path), "LINKCERT_LAB_EDGE_ADDR": "edge; rm"})


def test_seed_is_idempotent(lab: labctl.Lab) -> None:
    lab.seed(REPO / "lab" / "demo-dns.yml")
    lab.seed(REPO / "lab" / "demo-dns.yml")
    assert len(answers(lab, "em.example.net", "TXT")["TXT"]) == 2


def test_dns_helpers_set_and_clear(lab: labctl.Lab) -> None:
    lab.seed({"records": [{"host": "t1.test.example", "txt": ["one", "two"], "a": ["192.0.2.7"]},
                          {"host": "broken.test.example", "servfail": True}]})
    assert sorted(answers(lab, "t1.test.example", "TXT")["TXT"]) == ['"one"', '"two"']
    assert answers(lab, "t1.test.example", "A") == {"A": ["192.0.2.7"]}
    assert query(lab, "broken.test.example", "A").rcode() == dns_rcode.SERVFAIL
    lab.dns_clear("txt", "t1.test.example")
    lab.dns_clear("a", "t1.test.example")
    lab.dns_set("servfail", "broken.test.example", False)
    lab.dns_set("caa", "t1.test.example", "issue ca.example")
    assert answers(lab, "t1.test.example", "TXT") == {}
    assert answers(lab, "t1.test.example", "A") == {"A": [lab.default_ipv4]}
    assert answers(lab, "t1.test.example", "CAA") == {"CAA": ['0 issue "ca.example"']}
    assert query(lab, "broken.test.example", "A").rcode() == dns_rcode.NOERROR
    with pytest.raises(labctl.LabError, match="unknown DNS kind"):
        lab.dns_set("mx", "t1.test.example", "mail")


# --------------------------------------------------------------------------- nginx


def test_nginx_serves_challenge_and_404(lab: labctl.Lab) -> None:
    token = "tok-" + os.urandom(8).hex()
    (lab.webroot / ".well-known" / "acme-challenge" / token).write_text(token + ".thumb")
    base = f"http://{ADDR}:{lab.ports['http']}"
    status, body, ctype = http_get(f"{base}/.well-known/acme-challenge/{token}")
    assert (status, body) == (200, (token + ".thumb").encode())
    assert ctype.startswith("text/plain")
    assert http_get(f"{base}/.well-known/acme-challenge/missing")[0] == 404
    assert http_get(f"{base}/")[0] == 404
    assert http_get(f"{base}/{token}")[0] == 404


# --------------------------------------------------------------------------- lifecycle


def test_start_twice_is_noop(lab: labctl.Lab) -> None:
    before = lab.pids()
    assert set(before) == {"challtestsrv", "pebble", "nginx"}
    assert lab.start() == []
    assert lab.pids() == before
    assert all(state.running for state in lab.status().values())


def test_cli_status_env_and_start(lab: labctl.Lab) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKCERT_LAB_")}
    env.update(lab.env())
    script = [sys.executable, str(REPO / "lab" / "labctl.py")]
    status = subprocess.run(script + ["status"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("running") == 3
    printed = subprocess.run(script + ["env"], env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    assert printed == (lab.dir / "lab.env").read_text()
    before = lab.pids()
    again = subprocess.run(script + ["start"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "already running" in again.stdout
    assert lab.pids() == before


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    own = make_lab(tmp_path / "lab")
    own.start()
    pids = own.pids()
    assert len(pids) == 3
    assert own.stop() == ["nginx", "pebble", "challtestsrv"]
    assert not any(alive(pid) for pid in pids.values())
    assert list((own.dir / "run").glob("*.pid")) == []
    assert not own.is_running()
    assert own.stop() == []  # idempotent


def test_busy_port_gives_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind((ADDR, 0))
        holder.listen()
        busy = holder.getsockname()[1]
        own = make_lab(tmp_path / "lab", ports={"acme": busy})
        with pytest.raises(labctl.LabError, match=rf"pebble: port {busy} busy .*LINKCERT_LAB_ACME_PORT"):
            own.start()
    assert own.pids() == {}
    assert list((own.dir / "run").glob("*.pid")) == []


def test_failed_start_stops_what_was_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "nginx"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "nginx: [emerg] bind() to 127.0.0.1:$FAKE_PORT failed (98: Address already in use)"\nexit 1\n')
    fake.chmod(0o755)
    own = make_lab(tmp_path / "lab", binaries={"nginx": str(fake)})
    monkeypatch.setenv("FAKE_PORT", str(own.ports["http"]))
    with pytest.raises(labctl.LabError) as exc:
        own.start()
    message = str(exc.value)
    assert message.startswith("nginx failed to start")
    assert f"port {own.ports['http']} busy" in message and "Address already in use" in message
    assert own.pids() == {}
    assert list((own.dir / "run").glob("*.pid")) == []
    assert own.status()["pebble"].running is False
