"""The pending watcher, as linkcert-watch.service runs it (the renewal runner's --watch), against the lab's Pebble and DNS:
a domain onboarded while its CNAME was wrong is checked on its backoff, and issued, recorded and served once it is right;
one checked for too long is given up on until someone verifies it again; --domain is Verify Now on the edge; --receive is
the other end of a fleet push."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
from labtools import acme_args, run_module
from test_renewal_runner import install_runner

pytestmark = [pytest.mark.lab, pytest.mark.integration]

EDGE = "edge.watch.test"
ELSEWHERE = "other-esp.watch.test"


def order_count(lab: Any) -> int:
    return lab.log_file("pebble").read_text().count("/order-plz")


class Edge:
    """A runner configuration on this machine: the lab's CA and DNS, files under tmp_path, nginx stood in for by commands."""

    def __init__(self, lab: Any, tmp_path: Path, domains: List[str], backoff: List[int], **watch: Any) -> None:
        self.lab, self.tmp = lab, tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.state, self.live = tmp_path / "state", tmp_path / "live"
        self.reloaded = tmp_path / "reloaded"
        common = acme_args(lab, self.live, self.state, [{"domain": d} for d in domains])
        self.config = dict(common, reload_command=["touch", str(self.reloaded)], check_command=["true"], node="edge-w1",
                           drift_check={"edge_cname": EDGE, "ca_identities": ["letsencrypt.org"]},
                           watch={"edge_cname": EDGE, "ca_identities": ["letsencrypt.org"],
                                  "schedule": dict({"backoff": backoff, "hourly": 3600}, **watch)})
        self.path = tmp_path / "renew.json"
        self.save()
        self.runner = install_runner(tmp_path / "lib")
        lab.dns_set("a", EDGE, [lab.addr])
        lab.dns_set("a", ELSEWHERE, ["127.0.0.99"])

    def save(self) -> None:
        self.path.write_text(json.dumps(self.config))

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(self.runner), "--config", str(self.path), *args], input=stdin, capture_output=True,
                              text=True, timeout=300, check=False)

    def record(self, domain: str) -> Dict[str, Any]:
        return json.loads((self.state / ("%s.json" % domain)).read_text())

    def come_due(self, domain: str) -> None:
        """Move the domain's next check into the past, as the clock would: the runner decides what is due from its own clock."""
        path = self.state / ("%s.json" % domain)
        record = json.loads(path.read_text())
        record["watch"]["next_check"] = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)).isoformat()
        path.write_text(json.dumps(record))

    def serve_from(self, options: Dict[str, Any]) -> None:
        """Give the state root the traffic contract's options, as the certificate role's edge_sites would."""
        self.state.mkdir(mode=0o700, exist_ok=True)
        (self.state / ".sites.json").write_text(json.dumps(options))


def parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_domain_fixed_after_onboarding_is_issued_by_the_watcher_on_its_backoff(lab, tmp_path):
    domain = "late.watch.test"
    edge = Edge(lab, tmp_path, [domain], backoff=[60, 120, 300])
    lab.dns_set("cname", domain, ELSEWHERE)
    sites = {"conf": str(tmp_path / "sites.conf"), "names_map": str(tmp_path / "maps" / "https-names.map"), "listen_ipv6": False}
    edge.serve_from(sites)
    orders = order_count(lab)

    first = edge.run("--watch")
    assert first.returncode == 0, first.stdout + first.stderr  # a domain waiting for its customer is no failed run
    assert "%s  SSL Unknown  none" % domain in first.stdout and "publish: %s. CNAME %s." % (domain, EDGE) in first.stdout
    found = edge.record(domain)
    assert (found["ssl_status"], found["reason"], found["remediation"]) == ("unknown", "dns_not_ready", "%s. CNAME %s." % (domain, EDGE))
    watch = found["watch"]
    assert watch["attempts"] == 1 and parse(watch["next_check"]) - parse(watch["last_check"]) == datetime.timedelta(seconds=60)
    assert order_count(lab) == orders, "nothing is ordered for a name that does not route to the edge"

    early = edge.run("--watch")  # its next check has not come: not asked again
    assert "0 pending checked" in early.stdout and edge.record(domain)["watch"] == watch, early.stdout

    lab.dns_set("cname", domain, EDGE)
    edge.come_due(domain)  # the minute has passed, without waiting for it
    fixed = edge.run("--watch")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "Issued a certificate for %s" % domain in fixed.stdout and "nginx reloaded" in fixed.stdout, fixed.stdout
    found = edge.record(domain)
    assert (found["ssl_status"], found["action"]) == ("issued", "issued") and found["watch"] is None
    assert (edge.live / domain / "fullchain.pem").exists() and edge.reloaded.exists()
    assert order_count(lab) == orders + 1
    # Served by the traffic contract in the same run: its TLS server, and its plain HTTP redirected.
    assert "server_name %s;" % domain in Path(sites["conf"]).read_text()
    assert "%s 1;" % domain in Path(sites["names_map"]).read_text()

    edge.reloaded.unlink()
    again = edge.run("--watch")
    assert "0 pending checked" in again.stdout and not edge.reloaded.exists(), "an issued domain is the renewal timer's, not the watcher's"


def test_the_watcher_gives_up_and_verify_now_starts_it_over(lab, tmp_path):
    domain = "never.watch.test"
    edge = Edge(lab, tmp_path, [domain], backoff=[60], give_up_days=30)
    lab.dns_set("cname", domain, ELSEWHERE)
    # A record pending for 40 days whose next check has come (as 40 days of checks would leave it).
    now = datetime.datetime.now(datetime.timezone.utc)
    edge.state.mkdir(mode=0o700)
    (edge.state / ("%s.json" % domain)).write_text(json.dumps({
        "domain": domain, "ssl_status": "unknown", "label": "SSL Unknown", "reason": "dns_not_ready",
        "watch": {"since": (now - datetime.timedelta(days=40)).isoformat(), "attempts": 160,
                  "last_check": (now - datetime.timedelta(hours=6)).isoformat(), "next_check": (now - datetime.timedelta(minutes=1)).isoformat()}}))
    gave_up = edge.run("--watch")
    assert gave_up.returncode == 0, gave_up.stdout + gave_up.stderr
    found = edge.record(domain)
    assert (found["ssl_status"], found["reason"]) == ("unknown", "watch_stopped")
    assert found["watch"]["stopped"] and found["watch"]["next_check"] is None and found["watch"]["attempts"] == 161
    assert "checked 161 times over 30 days" in found["message"] and "linkcert-renew --domain NAME" in found["message"]
    assert found["remediation"] == "%s. CNAME %s." % (domain, EDGE), "the record to publish is still said"
    assert "0 pending checked" in edge.run("--watch").stdout, "no longer checked on its own"

    verified = edge.run("--domain", domain.upper() + ".")
    assert verified.returncode == 1, verified.stdout + verified.stderr  # asked for, and not issued: said in the exit status
    found = edge.record(domain)
    assert found["reason"] == "dns_not_ready" and found["watch"]["attempts"] == 1 and not found["watch"]["stopped"]
    assert found["watch"]["next_check"]


def test_verify_now_on_the_edge_refuses_what_it_cannot_do(lab, tmp_path):
    edge = Edge(lab, tmp_path, ["listed.watch.test"], backoff=[60])
    unknown = edge.run("--domain", "other.watch.test")
    assert unknown.returncode == 2 and "--domain other.watch.test is not one of this edge's domains" in unknown.stderr
    hostile = edge.run("--domain", "listed.watch.test; rm -rf /")
    assert hostile.returncode == 2 and "contains the character ';'" in hostile.stderr
    edge.config.update(fleet_issuer="edge-w0")  # this node (edge-w1) is not its fleet's issuer
    edge.save()
    elsewhere = edge.run("--domain", "listed.watch.test")
    assert elsewhere.returncode == 2 and "run linkcert-renew --domain listed.watch.test on edge-w0" in elsewhere.stderr
    assert not edge.state.exists() or not list(edge.state.glob("*.json")), "nothing was recorded"


def test_a_fleet_bundle_is_received_installed_and_served(lab, tmp_path):
    """The issuer's push, without SSH: its runner's bundle on the receiving runner's standard input."""
    domain = "pushed.watch.test"
    lab.dns_set("a", domain, [lab.addr])
    issuer_state, issuer_live = tmp_path / "issuer" / "state", tmp_path / "issuer" / "live"
    issued = run_module("acme_http01_cert", acme_args(lab, issuer_live, issuer_state, [{"domain": domain}]))
    assert issued.state == "CHANGED", issued.stdout
    bundle = run_module("certificate_sync", {"mode": "export", "cert_root": str(issuer_live), "state_root": str(issuer_state),
                                             "domains": [domain]}).result["bundle"]
    node = Edge(lab, tmp_path / "node", [domain], backoff=[60])
    sites = {"conf": str(tmp_path / "node" / "sites.conf"), "names_map": str(tmp_path / "node" / "maps" / "names.map")}
    node.serve_from(sites)
    received = node.run("--receive", stdin=json.dumps(bundle))
    assert received.returncode == 0, received.stdout + received.stderr
    answer = json.loads(received.stdout.strip().splitlines()[-1])
    assert answer["ok"] is True and answer["installed"] == [domain]
    assert (node.live / domain / "fullchain.pem").read_bytes() == (issuer_live / domain / "fullchain.pem").read_bytes()
    assert node.record(domain)["serial"] == issued.result["results"][0]["serial"]
    assert "server_name %s;" % domain in Path(sites["conf"]).read_text() and node.reloaded.exists()

    for garbage in ("not json", json.dumps({"certificates": [{"domain": "../../etc/passwd", "cert": "x"}]})):
        refused = node.run("--receive", stdin=garbage)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert json.loads(refused.stdout.strip().splitlines()[-1])["ok"] is False


def test_a_fleet_node_that_cannot_be_reached_is_tried_again_until_it_is(lab, tmp_path):
    domain = "fleet.watch.test"
    edge = Edge(lab, tmp_path, [domain], backoff=[60])
    lab.dns_set("cname", domain, EDGE)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "known_hosts").write_text("")
    # Nothing listens there: loopback, a port found free.
    import labctl
    edge.config["fleet"] = {"peers": [{"node": "edge-w2", "address": "127.0.0.1", "port": labctl.free_port()}],
                            "identity": str(key), "known_hosts": str(tmp_path / "known_hosts")}
    edge.save()
    first = edge.run("--watch")
    assert first.returncode == 4, first.stdout + first.stderr
    assert "fleet node edge-w2 NOT reached, retried by the next run" in first.stdout
    assert edge.record(domain)["ssl_status"] == "issued"
    pending = json.loads((edge.state / ".fleet-pending.json").read_text())
    assert pending == {"edge-w2": [domain]}
    later = edge.run("--watch")  # nothing new to do, but the undelivered certificate is pushed again
    assert later.returncode == 4 and "(%s)" % domain in later.stdout, later.stdout
    edge.config.pop("fleet")
    edge.save()
    assert edge.run("--watch").returncode == 0
