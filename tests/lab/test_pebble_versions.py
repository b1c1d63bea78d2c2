"""acme_http01_cert against both Pebbles Debian ships: 2.4 (Debian 12: no ARI, replaces not checked) and 2.6 (Debian 13:
renewalInfo, replaces checked, a revoked certificate's window in the past). The host's own package is one of them; the
other release's is fetched by scripts/fetch_pebble.sh (make test's set-up). Each version runs in a lab of its own that
reuses valid authorizations (PEBBLE_AUTHZREUSE=100) and offers an alternate chain (PEBBLE_ALTERNATE_ROOTS=1)."""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator

import josepy as jose
import pytest
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from labtools import acme_args, run_module

import labctl

pytestmark = [pytest.mark.lab, pytest.mark.integration]

VERSIONS = ("2.4", "2.6")
BINARIES = labctl.pebble_binaries()
ADDR = "127.0.0.1"


def test_both_pebbles_are_in_the_lab():
    """make test's set-up puts the other Debian release's Pebble next to the host's: a missing one fails here, no skip."""
    assert set(VERSIONS) <= set(BINARIES), "Pebbles found: %s (scripts/fetch_pebble.sh fetches the other release's)" % BINARIES


@pytest.fixture(scope="module", params=VERSIONS)
def pebble(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    version = request.param
    if version not in BINARIES:
        pytest.fail("no Pebble %s here (scripts/fetch_pebble.sh)" % version)
    ports = dict(zip(labctl.PORT_KEYS, labctl.free_ports(len(labctl.PORT_KEYS), ADDR)))
    lab = labctl.Lab(dir=tmp_path_factory.mktemp("pebble-%s" % version), addr=ADDR, ports=ports, nginx=True, default_ipv4="127.0.0.9",
                     timeout=30.0, binaries={"pebble": BINARIES[version]},
                     pebble_env={"PEBBLE_AUTHZREUSE": "100", "PEBBLE_ALTERNATE_ROOTS": "1"})
    lab.start()
    lab.version = version
    try:
        yield lab
    finally:
        lab.stop()


def issue(lab: Any, root: Path, domain: str, **extra: Any) -> Dict[str, Any]:
    lab.dns_set("a", domain, [lab.addr])
    run = run_module("acme_http01_cert", acme_args(lab, root / "live", root / "state", [{"domain": domain}], **extra))
    assert run.rc == 0, run.stdout + run.stderr
    return run.result["results"][0]


def pebble_log(lab: Any) -> str:
    return lab.log_file("pebble").read_text()


def challenge_fetches(lab: Any) -> int:
    """HTTP-01 requests the lab's nginx answered (Pebble's validations and the module's self-checks)."""
    log = lab.dir / "log" / "nginx-access.log"
    return log.read_text().count("/.well-known/acme-challenge/") if log.exists() else 0


def management(lab: Any, path: str) -> bytes:
    env = lab.env()
    context = ssl.create_default_context(cafile=env["LINKCERT_LAB_CA_BUNDLE"])
    with urllib.request.urlopen(env["LINKCERT_LAB_PEBBLE_MGMT"] + path, context=context, timeout=10) as response:
        return response.read()


def common_name(pem: bytes) -> str:
    return str(x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def topmost_issuer(fullchain: Path) -> str:
    top = x509.load_pem_x509_certificates(fullchain.read_bytes())[-1]
    return str(top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def state(root: Path, domain: str) -> Dict[str, Any]:
    return json.loads((root / "state" / ("%s.json" % domain)).read_text())


def test_the_directory_says_what_each_pebble_offers(pebble, tmp_path):
    result = issue(pebble, tmp_path, "offers.pebbles.test")
    assert result["action"] == "issued"
    [account] = (tmp_path / "state" / "accounts").iterdir()
    features = json.loads(account.read_text())["features"]
    assert features["ari"] is (pebble.version == "2.6"), features
    assert not features["profiles"], "neither 2.4 nor 2.6 offers profiles (2.7 does)"


def test_a_profile_the_ca_does_not_offer_is_refused_before_ordering(pebble, tmp_path):
    issue(pebble, tmp_path, "first.pebbles.test")  # the account's record knows the directory's features
    orders = pebble_log(pebble).count("/order-plz")
    pebble.dns_set("a", "profile.pebbles.test", [pebble.addr])
    run = run_module("acme_http01_cert", acme_args(pebble, tmp_path / "live", tmp_path / "state", [{"domain": "profile.pebbles.test"}],
                                                   profile="shortlived"))
    result = run.result["results"][0] if run.result.get("results") else run.result
    assert result.get("action") == "failed" and "shortlived" in (result.get("message") or result.get("msg")), run.stdout
    assert pebble_log(pebble).count("/order-plz") == orders


def test_renewal_follows_the_ari_window_where_the_ca_offers_one(pebble, tmp_path):
    domain = "window.pebbles.test"
    issue(pebble, tmp_path, domain)
    quiet = issue(pebble, tmp_path, domain)
    assert (quiet["action"], quiet["reason"]) == ("none", "not_due")
    recorded = state(tmp_path, domain)
    if pebble.version == "2.6":
        # Pebble 2.6: a 2-day window around two thirds of the lifetime; the renewal time is picked inside it.
        window = recorded["ari"]
        assert window["start"] <= quiet["renew_after"] < window["end"], (window, quiet["renew_after"])
    else:
        assert "ari" not in recorded, "Pebble 2.4 has no renewalInfo: the lifetime rule decides"


def test_a_revoked_certificate_is_renewed_at_once_where_the_ca_says_so(pebble, tmp_path):
    domain = "revoked.pebbles.test"
    first = issue(pebble, tmp_path, domain)
    live = tmp_path / "live" / domain
    key = serialization.load_pem_private_key((live / "privkey.pem").read_bytes(), password=None)
    net = acme_client.ClientNetwork(jose.JWKEC(key=key), alg=jose.ES256, verify_ssl=pebble.env()["LINKCERT_LAB_CA_BUNDLE"],
                                    user_agent="linkcert-tests")
    directory = messages.Directory.from_json(net.get(pebble.env()["LINKCERT_LAB_ACME_DIRECTORY"]).json())
    acme_client.ClientV2(directory, net).revoke(x509.load_pem_x509_certificate((live / "cert.pem").read_bytes()), 1)  # keyCompromise

    if pebble.version == "2.6":
        # The window asked when the certificate was issued is kept until the CA's Retry-After; once that has passed,
        # the next run asks again and learns of the revocation.
        kept = issue(pebble, tmp_path, domain)
        assert (kept["action"], kept["reason"]) == ("none", "not_due"), kept
        recorded_path = tmp_path / "state" / ("%s.json" % domain)
        recorded = json.loads(recorded_path.read_text())
        assert recorded["ari"]["retry_after"] > first["not_before"], recorded["ari"]
        recorded["ari"]["retry_after"] = "2000-01-01T00:00:00Z"
        recorded_path.write_text(json.dumps(recorded))
    after = issue(pebble, tmp_path, domain)
    if pebble.version == "2.6":
        assert (after["action"], after["reason"]) == ("renewed", "renewed"), after
        assert after["serial"] != first["serial"]
        assert "is a replacement of" in pebble_log(pebble), "the renewal named the revoked certificate in replaces"
    else:
        assert (after["action"], after["reason"]) == ("none", "not_due"), "without ARI nothing says the certificate was revoked"


def test_a_certificate_replaced_already_is_renewed_by_a_new_order(pebble, tmp_path):
    """Two copies of one edge's state renew the same certificate (an install lost after the CA issued, or a node that
    missed a fleet push): the second replaces is refused (2.6: HTTP 409), and the order is placed again without it."""
    domain = "replaced.pebbles.test"
    first = issue(pebble, tmp_path / "a", domain)
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    a = issue(pebble, tmp_path / "a", domain, force=True)
    assert a["action"] == "renewed"
    orders_before = pebble_log(pebble).count("/order-plz")
    b = issue(pebble, tmp_path / "b", domain, force=True)
    assert (b["action"], b["reason"], b["ssl_status"]) == ("renewed", "renewed", "issued"), (b["reason"], b["message"])
    assert len({first["serial"], a["serial"], b["serial"]}) == 3
    orders = pebble_log(pebble).count("/order-plz") - orders_before
    if pebble.version == "2.6":
        assert orders == 2, "one order refused for its replaces, one without it"
    else:
        assert orders == 1, "Pebble 2.4 offers no ARI, so no replaces is sent and none refused"
    assert b["serial"] == state(tmp_path / "b", domain)["serial"]


def test_valid_authorizations_are_reused_without_publishing_a_challenge(pebble, tmp_path):
    domain = "reuse.pebbles.test"
    fetches = challenge_fetches(pebble)
    issue(pebble, tmp_path, domain)
    assert challenge_fetches(pebble) > fetches, "the first order is validated over HTTP-01"
    fetches = challenge_fetches(pebble)
    again = issue(pebble, tmp_path, domain, force=True)
    assert again["action"] == "renewed", again
    assert challenge_fetches(pebble) == fetches, "a valid authorization was reused: no token published, none fetched"
    assert not any((Path(pebble.env()["LINKCERT_LAB_WEBROOT"]) / ".well-known" / "acme-challenge").glob("*")), "no token left behind"


def test_the_preferred_chain_is_installed_when_the_ca_offers_it(pebble, tmp_path):
    default_root, other_root = common_name(management(pebble, "/roots/0")), common_name(management(pebble, "/roots/1"))
    assert default_root != other_root
    issue(pebble, tmp_path / "default", "chain.pebbles.test")
    assert topmost_issuer(tmp_path / "default" / "live" / "chain.pebbles.test" / "fullchain.pem") == default_root
    preferred = issue(pebble, tmp_path / "preferred", "chain.pebbles.test", preferred_chain=other_root)
    assert preferred["action"] == "issued"
    assert topmost_issuer(tmp_path / "preferred" / "live" / "chain.pebbles.test" / "fullchain.pem") == other_root
    unknown = issue(pebble, tmp_path / "unknown", "chain.pebbles.test", preferred_chain="No Such Root")
    assert unknown["action"] == "issued", "no chain of that name: the CA's default is installed"
    assert topmost_issuer(tmp_path / "unknown" / "live" / "chain.pebbles.test" / "fullchain.pem") == default_root
