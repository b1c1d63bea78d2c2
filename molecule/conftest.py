"""Fixtures shared by the molecule scenarios' testinfra checks: the scenario's lab and its edge."""

import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lab"))
import labctl  # noqa: E402  (the lab's own helpers)

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "."))


@pytest.fixture(scope="module")
def lab():
    """The lab create.yml started (lab.json: addresses, ports, CA bundle)."""
    return json.loads((EPHEMERAL / "lab" / "lab.json").read_text())


@pytest.fixture(scope="module")
def edge_addr():
    """The first test host's address."""
    instances = yaml.safe_load((EPHEMERAL / "instance_config.yml").read_text())
    return instances[0]["address"]


@pytest.fixture(scope="module")
def pebble_root(lab, tmp_path_factory):
    """Pebble's root certificate, which issued certificates chain to."""
    return labctl.write_pebble_root(lab, tmp_path_factory.mktemp("pebble") / "root.pem")


@pytest.fixture(scope="module")
def edge_addrs():
    """Every test host's address, by inventory name."""
    instances = yaml.safe_load((EPHEMERAL / "instance_config.yml").read_text())
    return {entry["instance"]: entry["address"] for entry in instances}


# ------------------------------------------------------------------ the edge's traffic contract, as a client sees it

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def http_get(addr, host, path="/c/123?u=1"):
    """A plain-HTTP link of ``host`` on the edge at ``addr``: (status, Location, the echo upstream's JSON or None)."""
    request = urllib.request.Request("http://%s%s" % (addr, path), headers={"Host": host})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            body = response.read()
            status, location = response.status, response.headers.get("Location")
    except urllib.error.HTTPError as err:
        body, status, location = err.read(), err.code, err.headers.get("Location")
    try:
        echoed = json.loads(body)
    except ValueError:
        echoed = None
    return status, location, echoed


def https_get(addr, host, pebble_root, path="/c/123?u=1"):
    """The same link over HTTPS with SNI ``host``, verified against Pebble's root: (peer certificate, status, echoed JSON)."""
    context = ssl.create_default_context(cafile=str(pebble_root))
    with socket.create_connection((addr, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            cert = tls.getpeercert()
            tls.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
            answer = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
    head, _sep, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        echoed = json.loads(body)
    except ValueError:
        echoed = None
    return cert, status, echoed


def tls_refused(addr, host):
    """True when the edge refuses a TLS handshake for SNI ``host`` (None: no SNI) with an alert, showing no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((addr, 443), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                shown = tls.getpeercert(binary_form=True)
        except ssl.SSLError as exc:
            # nginx's ssl_reject_handshake answers with an alert (unrecognized_name or handshake_failure)
            assert "alert" in str(exc).lower() or "unrecognized" in str(exc).lower(), exc
            return True
    assert shown is None, "a certificate was shown"
    return False


def wait_until(check, timeout, what, interval=1.0):
    """Poll ``check()`` until it returns something true (returned) or ``timeout`` seconds pass (the test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail("%s: not within %d s" % (what, timeout))
        time.sleep(interval)


def nginx_settled(host, timeout=60):
    """Until a reload has settled on HOST: no nginx worker of an earlier generation left (none says "shutting down",
    and the same workers two looks a second apart). Before that, an old worker may still take a connection and answer
    it from the old configuration: a redirect seen gone can answer once more."""
    look = "ps -o pid=,args= -C nginx | grep 'worker process' | sort -n"
    deadline, previous = time.monotonic() + timeout, None
    while True:
        seen = host.run(look).stdout
        if "shutting down" not in seen and seen == previous:
            return
        if time.monotonic() > deadline:
            pytest.fail("nginx did not settle within %d s (workers of an earlier reload left):\n%s" % (timeout, seen))
        previous = seen
        time.sleep(1)


def wait_served(host, check, timeout, what):
    """``wait_until(check)``, then until nginx has settled, then ``check`` once more: what the configuration in force
    answers, not the last answer of a worker on its way out."""
    wait_until(check, timeout, what)
    nginx_settled(host)
    assert check(), "%s: seen, then not once nginx had settled" % what


@pytest.fixture(scope="module")
def lab_dns(lab):
    """The scenario's lab DNS, to change a customer's records in the middle of a test."""
    return labctl.Lab.from_env(lab)


@pytest.fixture(scope="module")
def nodes(edge_addrs):
    """Every node of the scenario as a testinfra host (the same inventory molecule gives the verifier)."""
    import testinfra  # noqa: PLC0415 (only the verifier's venv has it)

    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return {name: testinfra.get_host("ansible://" + name, ansible_inventory=inventory) for name in edge_addrs}
