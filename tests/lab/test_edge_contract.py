"""The edge's traffic contract on this machine's real nginx: the challenge_webroot role's server (its own template,
rendered) and the TLS servers and names map that edge_sites and the renewal runner write (``_sites.apply``), checked
cell by cell with real HTTP and TLS clients, with a stand-in tracking upstream that echoes what reached it.

Whatever nginx this machine has (Debian 12's 1.22, Debian 13's 1.26) takes the files: ``nginx -t`` validates every
write and the HTTP/2 syntax follows ``nginx -v``. The booted test hosts (molecule) check the same contract on the
roles' real layout; this is the quick, exhaustive one."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jinja2
import labctl
import pytest
from labtools import REPO

from ansible_collections.mailops.linkcert.plugins.module_utils import _sites
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore, iso

sys.path.insert(0, str(REPO / "lab"))
from echo_upstream import Echo  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.integration]

ADDR = "127.0.0.1"
NOW = datetime.datetime.now(datetime.timezone.utc)
LINK = "/c/123?u=1"


def nginx_version() -> str:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


class Edge:
    """nginx with the challenge server and the contract's files, a CA, records, and an echo upstream, on free ports."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.http_port, self.https_port, upstream_port = labctl.free_ports(3, ADDR)
        self.state, self.live, self.webroot = base / "state", base / "live", base / "webroot"
        for path in (self.live, self.webroot / ".well-known" / "acme-challenge", base / "logs", base / "maps", base / "tmp"):
            path.mkdir(parents=True)
        self.state.mkdir(mode=0o700)
        self.upstream = ThreadingHTTPServer((ADDR, upstream_port), Echo)
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()
        self.ca_key, self.ca_cert = labctl._make_ca()  # pylint: disable=protected-access
        self.ca_file = base / "ca.pem"
        self.ca_file.write_bytes(labctl._pem_cert(self.ca_cert))  # pylint: disable=protected-access
        self.options = _sites.SiteOptions(conf=str(base / "sites.conf"), names_map=str(base / "maps" / "https-names.map"),
                                          https_port=self.https_port, listen_ipv6=False,
                                          tracking_upstream="http://%s:%d" % (ADDR, upstream_port),
                                          http2_directive=_sites.http2_directive_for(nginx_version()))
        self.conf = base / "nginx.conf"
        self._write_nginx_conf()
        self.proc: Optional[subprocess.Popen] = None

    def _write_nginx_conf(self) -> None:
        templates = jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPO / "roles" / "challenge_webroot" / "templates")),
                                       keep_trailing_newline=True)
        challenge = templates.get_template("linkcert-challenge.conf.j2").render(
            ansible_managed="test", challenge_webroot_names_map_dir=str(self.base / "maps"), challenge_webroot_http_port=self.http_port,
            challenge_webroot_https_port=self.https_port, challenge_webroot_listen_ipv6=False, challenge_webroot_path=str(self.webroot),
            challenge_webroot_thumbprint="", challenge_webroot_tracking_upstream=self.options.tracking_upstream)
        (self.base / "challenge.conf").write_text(challenge.replace("listen %d default_server;" % self.http_port,
                                                                    "listen %s:%d default_server;" % (ADDR, self.http_port)))
        temps = "".join("    %s_temp_path %s;\n" % (kind, self.base / "tmp" / kind) for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf.write_text(
            ("user root;\n" if os.geteuid() == 0 else "") + "daemon off;\nworker_processes 1;\npid %s;\nerror_log %s notice;\n"
            "events {\n    worker_connections 64;\n}\nhttp {\n    access_log %s;\n%s    include %s;\n    include %s;\n}\n"
            % (self.base / "nginx.pid", self.base / "logs" / "error.log", self.base / "logs" / "access.log", temps,
               self.base / "challenge.conf", self.options.conf))

    # ---------------------------------------------------------- records

    def issue(self, domain: str, names: Optional[List[str]] = None, **fields: Any) -> Dict[str, Any]:
        """A certificate from the test CA for DOMAIN on disk, and its record (SSL Issued unless ``fields`` say otherwise)."""
        names = names or [domain]
        key, cert = labctl._make_server_cert(self.ca_key, self.ca_cert, names)  # pylint: disable=protected-access
        folder = self.live / domain
        folder.mkdir(exist_ok=True)
        (folder / "fullchain.pem").write_bytes(labctl._pem_cert(cert) + labctl._pem_cert(self.ca_cert))  # pylint: disable=protected-access
        (folder / "privkey.pem").write_bytes(labctl._pem_key(key))  # pylint: disable=protected-access
        os.chmod(folder / "privkey.pem", 0o600)
        record = {"domain": domain, "names": names, "ssl_status": "issued", "label": "SSL Issued", "reason": "issued", "serial": "%x" % cert.serial_number,
                  "not_before": iso(NOW - datetime.timedelta(days=1)), "not_after": iso(NOW + datetime.timedelta(days=60)),
                  "fullchain": str(folder / "fullchain.pem"), "privkey": str(folder / "privkey.pem")}
        record.update(fields)
        StateStore(self.state).save(domain, record)
        return record

    def pending(self, domain: str, reason: str = "dns_not_ready") -> None:
        StateStore(self.state).save(domain, {"domain": domain, "ssl_status": "unknown", "label": "SSL Unknown", "reason": reason})

    # ---------------------------------------------------------- nginx

    def run(self, argv: List[str]) -> Tuple[int, str, str]:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        return done.returncode, done.stdout, done.stderr

    def apply(self, options: Optional[_sites.SiteOptions] = None) -> _sites.Applied:
        """edge_sites' write: render, nginx -t, or everything back."""
        return _sites.apply(str(self.state), options or self.options, ["nginx", "-t", "-q", "-c", str(self.conf)], self.run)

    def start(self) -> None:
        self.proc = subprocess.Popen(["nginx", "-c", str(self.conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (labctl._tcp_open(ADDR, self.http_port) and labctl._tcp_open(ADDR, self.https_port)):  # pylint: disable=protected-access
            assert self.proc.poll() is None, (self.base / "logs" / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.1)

    def reload(self) -> None:
        """One reload, as the roles and the runner do (nginx -t passed in apply); returns once new workers answer."""
        assert self.proc is not None
        before = self._workers()
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not (self._workers() and not self._workers() & before):
            assert time.monotonic() < deadline, "nginx's workers were not replaced"
            time.sleep(0.1)

    def _workers(self) -> set:
        assert self.proc is not None
        found = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path("/proc/%s/stat" % entry).read_text()
                    cmdline = Path("/proc/%s/cmdline" % entry).read_bytes()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid and b"shutting down" not in cmdline:
                    found.add(int(entry))
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(30)
        self.upstream.shutdown()

    # ---------------------------------------------------------- clients

    def http(self, host: str) -> Tuple[int, Optional[str], Optional[Dict[str, Any]]]:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any) -> None:
                return None

        request = urllib.request.Request("http://%s:%d%s" % (ADDR, self.http_port, LINK), headers={"Host": host})
        try:
            with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
                return response.status, None, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Location"), None

    def https(self, host: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with socket.create_connection((ADDR, self.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (LINK, host)).encode())
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                cert = tls.getpeercert()
        return cert, json.loads(answer.partition(b"\r\n\r\n")[2])

    def refused(self, host: Optional[str]) -> bool:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection((ADDR, self.https_port), timeout=10) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    return tls.getpeercert(binary_form=True) is None
            except ssl.SSLError as exc:
                return "alert" in str(exc).lower() or "unrecognized" in str(exc).lower()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    found = Edge(tmp_path)
    try:
        yield found
    finally:
        found.stop()


def redirected(edge: Edge, host: str) -> bool:
    return edge.http(host)[:2] == (301, "https://%s:%d%s" % (host, edge.https_port, LINK))


def proxied(edge: Edge, host: str) -> bool:
    status, _location, echoed = edge.http(host)
    return status == 200 and bool(echoed) and (echoed["upstream"], echoed["host"], echoed["path"], echoed["forwarded_proto"]) == (
        "linkcert-echo", host, LINK, "http")


def served(edge: Edge, host: str, serial: str) -> bool:
    cert, echoed = edge.https(host)
    return int(cert["serialNumber"], 16) == int(serial, 16) and (echoed["host"], echoed["path"], echoed["forwarded_proto"]) == (host, LINK, "https")


def test_every_cell_of_the_contract(edge: Edge) -> None:
    issued = edge.issue("links.customer.test", names=["links.customer.test", "click.customer.test"])
    held = edge.issue("held.customer.test", ssl_status="pending", reason="dns_drift", held=True)
    expired = edge.issue("expired.customer.test", ssl_status="pending", reason="acme_server_internal",
                         not_after=iso(NOW - datetime.timedelta(minutes=1)))
    edge.issue("removed.customer.test")
    os.unlink(edge.live / "removed.customer.test" / "fullchain.pem")
    edge.pending("pending.customer.test")
    applied = edge.apply()
    assert applied.served == ["held.customer.test", "links.customer.test"] and applied.redirected == ["links.customer.test"]
    edge.start()

    # Port 80: challenges for every name, whatever its state.
    (edge.webroot / ".well-known" / "acme-challenge" / "tok_1").write_text("tok_1.thumb")
    for name in ("links.customer.test", "pending.customer.test", "nobody.customer.test"):
        request = urllib.request.Request("http://%s:%d/.well-known/acme-challenge/tok_1" % (ADDR, edge.http_port), headers={"Host": name})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"tok_1.thumb", name
    # Issued: plain HTTP redirected (every name of the certificate), HTTPS its own certificate, proxied.
    for name in ("links.customer.test", "click.customer.test"):
        assert redirected(edge, name) and served(edge, name, issued["serial"]), name
    # Held: HTTPS still served for the links that use it, plain HTTP proxied (never sent to an HTTPS that may stop working).
    assert proxied(edge, "held.customer.test") and served(edge, "held.customer.test", held["serial"])
    # Everything else: plain HTTP proxied, port 443 refused with an alert, no certificate of another name.
    for name in ("expired.customer.test", "removed.customer.test", "pending.customer.test", "nobody.customer.test"):
        assert proxied(edge, name), name
        assert edge.refused(name), name
    assert edge.refused(None), "a client without SNI gets no certificate either"
    assert expired["serial"]


def test_an_issuance_a_hold_and_a_removal_each_change_both_ports_in_one_reload(edge: Edge) -> None:
    edge.pending("late.customer.test")
    edge.apply()
    edge.start()
    assert proxied(edge, "late.customer.test") and edge.refused("late.customer.test")

    record = edge.issue("late.customer.test")  # the watcher issued it
    assert edge.apply().changed
    edge.reload()
    assert redirected(edge, "late.customer.test") and served(edge, "late.customer.test", record["serial"])

    StateStore(edge.state).save("late.customer.test", dict(record, ssl_status="pending", reason="dns_drift", held=True))
    assert edge.apply().redirected == []
    edge.reload()
    assert proxied(edge, "late.customer.test") and served(edge, "late.customer.test", record["serial"])

    os.unlink(record["fullchain"])  # removed from the edge
    assert edge.apply().served == []
    edge.reload()
    assert proxied(edge, "late.customer.test") and edge.refused("late.customer.test")
    assert not edge.apply().changed, "the same records render the same files"


def test_redirect_off_proxies_plain_http_for_every_name(edge: Edge) -> None:
    record = edge.issue("links.customer.test")
    edge.apply(edge.options._replace(http_redirect=False))
    edge.start()
    assert proxied(edge, "links.customer.test") and served(edge, "links.customer.test", record["serial"])


def test_nginx_refusing_the_files_leaves_the_served_ones(edge: Edge) -> None:
    record = edge.issue("links.customer.test")
    edge.apply()
    before = (Path(edge.options.conf).read_bytes(), Path(edge.options.names_map).read_bytes())
    edge.start()
    broken = edge.issue("broken.customer.test")
    Path(broken["privkey"]).write_text("not a key\n")
    with pytest.raises(Exception) as caught:
        edge.apply()
    assert getattr(caught.value, "reason", None) == "validate_failed", caught.value
    assert (Path(edge.options.conf).read_bytes(), Path(edge.options.names_map).read_bytes()) == before
    assert redirected(edge, "links.customer.test") and served(edge, "links.customer.test", record["serial"])
