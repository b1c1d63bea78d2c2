# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-certificate flow against a scripted CA that offers ARI and profiles (the lab's Pebble 2.4 offers neither).

The directory is the recorded Let's Encrypt one; the CA object only hands out orders and signs CSRs.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_keys as keys
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_limits as limits
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_renewal as renewal
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_run as run_module
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_client import AcmeProblem
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_run import CertSpec, Runner, Settings, cert_specs, settings_from_options
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

DATA = Path(__file__).parent / "data" / "ari"
NOW = datetime.datetime.now(datetime.timezone.utc)


class ScriptedCA:
    """Enough of AcmeClient for Runner: orders with no pending authorizations, real signatures."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Scripted CA")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
                     .not_valid_after(NOW + datetime.timedelta(days=3650))
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.orders = []
        self.ari_calls = 0
        self.window = (NOW + datetime.timedelta(days=50), NOW + datetime.timedelta(days=52))
        self.already_replaced_once = False
        self.requests = 0
        self.account_uri = "https://ca.example/acct/1"
        self.lock = threading.Lock()
        self.csrs = {}  # per order: Runner works on several certificates at once

    def new_order(self, names, deadline, replaces=None, profile=None):
        with self.lock:
            self.orders.append({"names": list(names), "replaces": replaces, "profile": profile})
            number = len(self.orders)
        if replaces and self.already_replaced_once:
            self.already_replaced_once = False
            raise AcmeProblem("already replaced", "alreadyReplaced")
        return "https://ca.example/order/%d" % number, {"status": "ready", "authorizations": [], "finalize": "https://ca.example/fin/%d" % number}

    def wait_valid(self, url, deadline, item, pending=("pending", "processing")):
        number = url.rsplit("/", 1)[1]
        if pending == ("pending",):
            return {"status": "ready", "finalize": "https://ca.example/fin/%s" % number}
        return {"status": "valid", "certificate": "https://ca.example/cert/%s" % number}

    def finalize(self, url, csr_pem, deadline, item):
        self.csrs[url.rsplit("/", 1)[1]] = x509.load_pem_x509_csr(csr_pem)

    def download(self, url, deadline, item):
        csr = self.csrs[url.rsplit("/", 1)[1]]
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        leaf = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=90))
                .add_extension(san, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        return leaf.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)

    def renewal_info(self, cert_id, deadline, item):
        self.ari_calls += 1
        start, end = self.window
        return {"suggestedWindow": {"start": renewal.iso(start), "end": renewal.iso(end)}}, "21600"


def make_runner(tmp_path, ca, check_mode=False, profile="tlsserver", force=False, server_check=None, run_command=None, ca_limits=None):
    settings = Settings(directory_url="https://ca.example/dir", ca_bundle=None, account_key=str(tmp_path / "state" / "account.key"),
                        email=None, terms_agreed=True, eab=None, webroot=str(tmp_path / "webroot"), cert_root=str(tmp_path / "live"),
                        state_root=str(tmp_path / "state"), key_type="ec256", reuse_key=False, renew_before="auto", profile=profile,
                        self_check=False, challenge_port=80, resolver=None, timeout=30.0, force=force, check_mode=check_mode,
                        server_check=server_check, ca_limits=limits.limits_from(ca_limits, "https://ca.example/dir"))
    runner = Runner(settings, run_command=run_command)
    runner._client = ca
    runner.account_uri = ca.account_uri
    runner._account_record = {"features": renewal.directory_features(json.loads((DATA / "directory_letsencrypt.json").read_text()))}
    return runner


SPEC = CertSpec("links.customer.example", ["links.customer.example"])


def test_ari_renewal_sends_replaces_and_falls_back_when_already_replaced(tmp_path):
    ca = ScriptedCA()
    first = make_runner(tmp_path, ca).process(SPEC)
    assert first["action"] == "issued" and ca.orders[-1] == {"names": ["links.customer.example"], "replaces": None, "profile": "tlsserver"}
    assert ca.ari_calls == 1, "the new certificate's window is asked in the run that issued it"

    quiet = make_runner(tmp_path, ca).process(SPEC)
    assert quiet["action"] == "none" and quiet["reason"] == "not_due" and ca.ari_calls == 1
    again = make_runner(tmp_path, ca).process(SPEC)
    assert again["action"] == "none" and ca.ari_calls == 1, "the ARI answer is cached until its Retry-After"
    assert again["renew_after"] == quiet["renew_after"] == first["renew_after"]
    renew_at = datetime.datetime.fromisoformat(quiet["renew_after"].replace("Z", "+00:00"))
    assert ca.window[0] <= renew_at < ca.window[1]

    ari_answer_expires(tmp_path, "links.customer.example")
    ca.window = (NOW - datetime.timedelta(days=2), NOW - datetime.timedelta(days=1))
    ca.already_replaced_once = True
    installed = renewal.cert_info((tmp_path / "live" / "links.customer.example" / "cert.pem").read_bytes())
    renewed = make_runner(tmp_path, ca).process(SPEC)
    assert renewed["action"] == "renewed" and renewed["reason"] == "renewed"
    assert [o["replaces"] for o in ca.orders[-2:]] == [installed.ari_cert_id, None]
    assert ca.ari_calls == 3, "asked again once its answer expired, and for the renewed certificate"


@pytest.mark.parametrize("window, reason", [
    # Pebble 2.6's two days around two thirds of the lifetime, for a certificate of 90 days that would be fine; here the
    # window is as long as the whole lifetime (NOW - 1 h .. NOW + 90 d): it says nothing about when.
    ((NOW - datetime.timedelta(hours=2), NOW + datetime.timedelta(days=91)), "lifetime_threshold"),
    # A revoked certificate's window: a second, an hour ago. Short, in the past: renew now.
    ((NOW - datetime.timedelta(hours=1), NOW - datetime.timedelta(hours=1) + datetime.timedelta(seconds=1)), "ari_window"),
])
def test_a_window_as_long_as_the_lifetime_is_kept_but_the_lifetime_rule_decides(tmp_path, window, reason):
    ca = ScriptedCA()
    ca.window = window
    first = make_runner(tmp_path, ca).process(SPEC)
    recorded = json.loads((tmp_path / "state" / "links.customer.example.json").read_text())["ari"]
    if reason == "lifetime_threshold":
        assert recorded["renew_at"] is None and recorded["start"] == renewal.iso(window[0])
        lifetime = datetime.timedelta(days=90, hours=1)  # the scripted CA's: NOW - 1 h .. NOW + 90 d
        assert first["renew_after"] == renewal.iso(NOW + datetime.timedelta(days=90) - lifetime / 3), "a third of it left"
        quiet = make_runner(tmp_path, ca).process(SPEC)
        assert (quiet["action"], quiet["reason"], ca.ari_calls) == ("none", "not_due", 1), "kept until its Retry-After, not asked again"
        assert "a third of its lifetime left" in quiet["message"]
    else:
        renewed = make_runner(tmp_path, ca).process(SPEC)
        assert (renewed["action"], renewed["reason"]) == ("renewed", "renewed") and ca.orders[-1]["replaces"]


def ari_answer_expires(tmp_path, domain):
    """The CA's Retry-After for the cached ARI answer has passed: the next run asks again (and sees a new window)."""
    state_path = tmp_path / "state" / ("%s.json" % domain)
    state = json.loads(state_path.read_text())
    state["ari"]["retry_after"] = renewal.iso(NOW - datetime.timedelta(minutes=1))
    state_path.write_text(json.dumps(state))


def test_check_mode_asks_nothing_and_writes_nothing(tmp_path):
    ca = ScriptedCA()
    result = make_runner(tmp_path, ca, check_mode=True).process(SPEC)
    assert (result["action"], result["changed"]) == ("issued", True)
    assert ca.orders == [] and ca.ari_calls == 0
    assert not (tmp_path / "state").exists() and not (tmp_path / "live").exists()


def test_profile_the_ca_does_not_offer(tmp_path):
    ca = ScriptedCA()
    result = make_runner(tmp_path, ca, profile="nonexistent").process(SPEC)
    assert (result["action"], result["reason"], result["ssl_status"]) == ("failed", "profile_unknown", "pending")
    assert ca.orders == []
    assert "tlsserver" in result["message"]


def test_names_changed_renews_without_replaces(tmp_path):
    ca = ScriptedCA()
    make_runner(tmp_path, ca).process(SPEC)
    wider = CertSpec(SPEC.domain, SPEC.names + ["www.customer.example"])
    result = make_runner(tmp_path, ca).process(wider)
    assert result["action"] == "renewed" and ca.orders[-1]["replaces"] is None
    assert ca.orders[-1]["names"] == ["links.customer.example", "www.customer.example"]


def test_a_failed_install_is_that_certificates_failure_and_the_others_go_on(tmp_path, monkeypatch):
    """A full disk while installing one certificate: a per-certificate failure, the working pair kept, the run goes on."""
    ca = ScriptedCA()
    specs = [CertSpec("full.customer.example", ["full.customer.example"]), CertSpec("fine.customer.example", ["fine.customer.example"])]
    first = make_runner(tmp_path, ca).run(specs)
    assert [r["action"] for r in first] == ["issued", "issued"]
    before = (tmp_path / "live" / "full.customer.example" / "cert.pem").read_bytes()

    runner = make_runner(tmp_path, ca, force=True)
    real_install = runner.store.install

    def install(domain, *pems):
        if domain == "full.customer.example":
            raise LinkcertError("cannot write %s: No space left on device (ENOSPC)" % domain, item=domain, reason="write_failed")
        return real_install(domain, *pems)

    monkeypatch.setattr(runner.store, "install", install)
    results = runner.run(specs)
    assert [(r["action"], r["reason"], r["ssl_status"]) for r in results] == [("failed", "write_failed", "issued"), ("renewed", "renewed", "issued")]
    assert "installed certificate is untouched" in results[0]["message"]
    assert (tmp_path / "live" / "full.customer.example" / "cert.pem").read_bytes() == before
    state = json.loads((tmp_path / "state" / "full.customer.example.json").read_text())
    assert state["reason"] == "write_failed" and state["failures"][-1]["reason"] == "write_failed"


class Commands:
    """Records the commands run and answers with the given exit status."""

    def __init__(self, rc, err=""):
        self.rc, self.err, self.calls = rc, err, []

    def __call__(self, argv):
        self.calls.append(list(argv))
        return self.rc, "", self.err


NGINX_BROKEN = ('nginx: [emerg] unknown directive "bogus" in /etc/nginx/conf.d/x.conf:1\n'
                "nginx: configuration file /etc/nginx/nginx.conf test failed\n")
SPECS = [CertSpec("a.customer.example", ["a.customer.example"]), CertSpec("b.customer.example", ["b.customer.example"])]


def test_server_check_fails_every_due_certificate_without_ordering(tmp_path):
    ca = ScriptedCA()
    commands = Commands(1, NGINX_BROKEN)
    results = make_runner(tmp_path, ca, server_check=("nginx", "-t"), run_command=commands).run(SPECS)
    assert [(r["action"], r["reason"], r["ssl_status"]) for r in results] == [("failed", "server_config_broken", "pending")] * 2
    assert commands.calls == [["nginx", "-t"]], "the check runs once per run"
    assert ca.orders == []
    assert "nginx -t failed (exit 1), so nothing was ordered" in results[0]["message"]
    assert "/etc/nginx/conf.d/x.conf:1" in results[0]["message"]
    assert not (tmp_path / "live").exists()


def test_server_check_runs_only_when_something_is_due_and_never_in_check_mode(tmp_path):
    ca = ScriptedCA()
    assert [r["action"] for r in make_runner(tmp_path, ca).run(SPECS)] == ["issued", "issued"]
    commands = Commands(0)
    quiet = make_runner(tmp_path, ca, server_check=("nginx", "-t"), run_command=commands).run(SPECS)
    assert [r["action"] for r in quiet] == ["none", "none"] and commands.calls == []
    forced = make_runner(tmp_path, ca, force=True, check_mode=True, server_check=("nginx", "-t"), run_command=commands).run(SPECS)
    assert [r["action"] for r in forced] == ["renewed", "renewed"] and commands.calls == []
    renewed = make_runner(tmp_path, ca, force=True, server_check=("nginx", "-t"), run_command=commands).run(SPECS)
    assert [r["action"] for r in renewed] == ["renewed", "renewed"] and commands.calls == [["nginx", "-t"]]


def test_server_check_that_cannot_start_is_a_failure_too(tmp_path):
    def missing(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    result = make_runner(tmp_path, ScriptedCA(), server_check=("nginx", "-t"), run_command=missing).process(SPECS[0])
    assert (result["reason"], result["action"]) == ("server_config_broken", "failed")
    assert "exit 127" in result["message"] and "No such file" in result["message"]


@pytest.mark.parametrize("bad", ["nginx -t", [], ["nginx", ""], ["nginx", "-t\0"], [["nginx"]]])
def test_a_bad_server_check_is_named_before_anything(tmp_path, bad):
    options = {"acme_directory": "https://ca.example/dir", "webroot": str(tmp_path / "w"), "cert_root": str(tmp_path / "c"),
               "state_root": str(tmp_path / "s"), "server_check": bad}
    with pytest.raises(InputError, match="server_check must be a command as a non-empty list of arguments"):
        settings_from_options(options)
    assert list(tmp_path.iterdir()) == []


def b64url(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("key, message", [
    (b64url(b"k" * 31), "eab_hmac_key decodes to 31 bytes; an HS256 MAC key has at least 32 (RFC 7518 3.2)"),
    (b64url(b"k" * 64)[:40], "eab_hmac_key decodes to 30 bytes"),  # a 64-byte key pasted half
    ("abc+/def" * 6, "eab_hmac_key is not base64url text"),  # standard base64, not url-safe
    (b64url(b"k" * 32) + "\n", None),  # a trailing newline is a paste's, not the key's
    (b64url(b"k" * 32), None),
    (b64url(b"k" * 32) + "=", None),
    ("A" * 45, "eab_hmac_key is not base64url text"),  # a length no base64 text has
])
def test_an_eab_key_too_short_or_not_base64url_is_named_without_showing_it(tmp_path, key, message):
    options = {"acme_directory": "https://ca.example/dir", "webroot": str(tmp_path / "w"), "cert_root": str(tmp_path / "c"),
               "state_root": str(tmp_path / "s"), "eab_kid": "kid-1", "eab_hmac_key": key}
    if message is None:
        assert settings_from_options(options).eab == ("kid-1", key.strip())
        return
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        settings_from_options(options)
    assert key.strip() not in str(caught.value) and caught.value.item == "eab_hmac_key"
    assert list(tmp_path.iterdir()) == []


def test_server_check_needs_a_way_to_run_it(tmp_path):
    options = {"acme_directory": "https://ca.example/dir", "webroot": str(tmp_path / "w"), "cert_root": str(tmp_path / "c"),
               "state_root": str(tmp_path / "s"), "server_check": ["nginx", "-t"]}
    with pytest.raises(InputError, match="server_check"):
        Runner(settings_from_options(options))


class FailingCA(ScriptedCA):
    """Every order fails validation the same way, word for word."""

    def new_order(self, names, deadline, replaces=None, profile=None):
        self.orders.append({"names": list(names)})
        raise LinkcertError("DNS problem: NXDOMAIN looking up A for %s" % names[0], item=names[0], reason="acme_dns")


def test_identical_failures_are_all_recorded_and_the_guard_trips(tmp_path):
    ca = FailingCA()
    for attempt in range(1, 6):
        result = make_runner(tmp_path, ca).process(SPEC)
        assert (result["action"], result["reason"]) == ("failed", "acme_dns")
        state = json.loads((tmp_path / "state" / "links.customer.example.json").read_text())
        assert len(state["failures"]) == attempt, "a failure with the same message as the last one was not recorded"
    held = make_runner(tmp_path, ca).process(SPEC)
    assert (held["action"], held["reason"]) == ("none", "rate_limit_guard") and len(ca.orders) == 5


def test_a_held_certificate_is_never_ordered_and_kept(tmp_path):
    ca = ScriptedCA()
    never = CertSpec("b.customer.example", ["b.customer.example"], {"reason": "dns_not_ready", "explanation": "CNAME is elsewhere"})
    result = make_runner(tmp_path, ca, force=True).process(never)
    assert (result["held"], result["serial"], result["action"]) == (True, None, "none") and ca.orders == []
    assert not (tmp_path / "state").exists() and not (tmp_path / "live").exists(), "a held domain with nothing installed writes nothing"

    issued = make_runner(tmp_path, ca).process(SPEC)
    moved = SPEC._replace(hold={"reason": "dns_not_ready", "explanation": "CNAME is elsewhere", "remediation": "x. CNAME e."})
    before = (tmp_path / "live" / SPEC.domain / "cert.pem").read_bytes()
    result = make_runner(tmp_path, ca, force=True).process(moved)
    assert (result["ssl_status"], result["reason"], result["remediation"]) == ("pending", "dns_drift", "x. CNAME e.")
    assert result["serial"] == issued["serial"] and "is still served" in result["message"] and len(ca.orders) == 1
    assert (tmp_path / "live" / SPEC.domain / "cert.pem").read_bytes() == before
    assert json.loads((tmp_path / "state" / ("%s.json" % SPEC.domain)).read_text())["reason"] == "dns_drift"


@pytest.mark.parametrize("hold", [{"reason": "x"}, {"explanation": "y"}, {"reason": "", "explanation": "y"}, "dns_not_ready"])
def test_a_bad_hold_is_named(hold):
    with pytest.raises(InputError, match=r"certificates\[1\]\.hold must be a dict with a reason and an explanation"):
        cert_specs([{"domain": "a.customer.example", "hold": hold}])


class DirectoryClient:
    """The part of AcmeClient that ``Runner.client`` uses: the directory, the key's JWK and registration."""

    directory_body = json.loads((DATA / "directory_letsencrypt.json").read_text())
    registrations = 0

    def __init__(self, directory_url, ca_bundle, key, timeout):
        self.jwk, self.alg = keys.jwk_and_alg(key)
        self.account_uri = None
        self.requests = 0

    def directory(self, deadline):
        return self.directory_body

    def account(self, email, terms_agreed, eab, deadline):
        type(self).registrations += 1
        self.account_uri = "https://ca.example/acct/1"
        return self.account_uri


def fresh_runner(tmp_path):
    settings = make_runner(tmp_path, ScriptedCA()).s
    return Runner(settings)


def test_the_account_record_is_written_when_it_changes_and_only_then(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "AcmeClient", DirectoryClient)
    monkeypatch.setattr(DirectoryClient, "registrations", 0)
    fresh_runner(tmp_path).client(deadline=0)
    [record_path] = (tmp_path / "state" / "accounts").iterdir()
    first = record_path.read_bytes()
    assert json.loads(first)["features"]["ari"] is True and DirectoryClient.registrations == 1

    os.utime(record_path, (1_000_000_000, 1_000_000_000))
    fresh_runner(tmp_path).client(deadline=0)
    assert DirectoryClient.registrations == 1, "a known account is not registered again"
    assert record_path.stat().st_mtime == 1_000_000_000 and record_path.read_bytes() == first, "nothing changed, nothing written"

    monkeypatch.setattr(DirectoryClient, "directory_body", json.loads((DATA / "directory_pebble_2_4.json").read_text()))
    fresh_runner(tmp_path).client(deadline=0)
    changed = json.loads(record_path.read_text())
    assert changed["features"]["ari"] is False and changed["uri"] == "https://ca.example/acct/1"
    assert DirectoryClient.registrations == 1


def test_a_run_that_orders_sweeps_tokens_left_by_killed_runs_and_check_mode_does_not(tmp_path):
    folder = tmp_path / "webroot" / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True)
    stale, fresh = folder / ("s" * 43), folder / ("f" * 43)
    for path in (stale, fresh):
        path.write_text(path.name + ".thumbprint")
    old = time.time() - 3 * 3600
    os.utime(stale, (old, old))

    make_runner(tmp_path, ScriptedCA(), check_mode=True).run([SPEC])
    assert stale.exists() and fresh.exists(), "check mode writes and removes nothing"

    ca = ScriptedCA()
    assert [r["action"] for r in make_runner(tmp_path, ca).run(SPECS)] == ["issued", "issued"]
    assert not stale.exists() and fresh.read_text() == fresh.name + ".thumbprint"


@pytest.mark.parametrize("webroot, cert_root, state_root, message", [
    ("w", "w/live", "s", r"cert_root \(.*/w/live\) must not be inside webroot"),
    ("s/webroot", "c", "s", r"webroot \(.*/s/webroot\) must not be inside state_root"),
    ("c/..//c/tokens", "c", "s", r"webroot \(.*\) must not be inside cert_root"),
    ("w", "c", "c/", r"cert_root \(.*/c\) must not be the same as state_root"),
    ("w", "link-to-w/live", "s", r"cert_root \(.*/link-to-w/live\) must not be inside webroot"),
])
def test_roots_inside_one_another_are_refused_before_anything(tmp_path, webroot, cert_root, state_root, message):
    (tmp_path / "w").mkdir()
    (tmp_path / "link-to-w").symlink_to(tmp_path / "w")
    options = {"acme_directory": "https://ca.example/dir", "webroot": str(tmp_path / webroot), "cert_root": str(tmp_path / cert_root),
               "state_root": str(tmp_path / state_root)}
    with pytest.raises(InputError, match=message):
        settings_from_options(options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link-to-w", "w"] and list((tmp_path / "w").iterdir()) == []


def test_sibling_roots_and_names_that_only_share_a_prefix_are_fine(tmp_path):
    options = {"acme_directory": "https://ca.example/dir", "webroot": str(tmp_path / "linkcert"), "cert_root": str(tmp_path / "linkcert-live"),
               "state_root": str(tmp_path / "linkcert-state")}
    assert settings_from_options(options).cert_root == str(tmp_path / "linkcert-live")


class GoneAccountCA(DirectoryClient, ScriptedCA):
    """A CA whose database lost the account on record: its first order answers accountDoesNotExist."""

    refusals = 0

    def __init__(self, directory_url, ca_bundle, key, timeout):
        DirectoryClient.__init__(self, directory_url, ca_bundle, key, timeout)
        ScriptedCA.__init__(self)

    def new_order(self, names, deadline, replaces=None, profile=None):
        if type(self).refusals:
            type(self).refusals -= 1
            raise AcmeProblem("creating the order: the CA answered accountDoesNotExist: no such account", "accountDoesNotExist", names[0])
        return ScriptedCA.new_order(self, names, deadline, replaces, profile)


def test_an_account_the_ca_forgot_is_registered_again_by_the_next_certificate(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "AcmeClient", GoneAccountCA)
    monkeypatch.setattr(GoneAccountCA, "registrations", 0)
    fresh_runner(tmp_path).client(deadline=0)
    assert GoneAccountCA.registrations == 1
    monkeypatch.setattr(GoneAccountCA, "refusals", 1)
    runner = fresh_runner(tmp_path)
    lost = runner.process(SPEC)
    assert (lost["action"], lost["reason"], lost["ssl_status"], lost["retry"]) == ("failed", "acme_account_does_not_exist", "pending", "later")
    assert "registers the account key again" in lost["remediation"] and lost["message"].endswith("A later run retries.")
    [record_path] = (tmp_path / "state" / "accounts").iterdir()
    assert "uri" not in json.loads(record_path.read_text()), "the URL the CA no longer knows is forgotten"
    other = runner.process(CertSpec("b.customer.example", ["b.customer.example"]))
    assert other["action"] == "issued" and GoneAccountCA.registrations == 2
    assert json.loads(record_path.read_text())["uri"] == "https://ca.example/acct/1"


class RefusingCA(ScriptedCA):
    def __init__(self, failure):
        super().__init__()
        self.failure = failure

    def new_order(self, names, deadline, replaces=None, profile=None):
        raise self.failure


@pytest.mark.parametrize("failure, status, retry, remediation, later", [
    (AcmeProblem("the CA answered badCSR: key too small", "badCSR"), "pending", "fix", "check key_type", False),
    (AcmeProblem("the CA answered serverInternal: oops", "serverInternal"), "pending", "backoff", "internal error", True),
    (AcmeProblem("the CA answered caa: forbidden", "caa"), "unknown", "fix", None, False),
    (LinkcertError("something else", reason="write_failed"), "pending", "later", None, True),
])
def test_a_failure_says_what_happens_next(tmp_path, failure, status, retry, remediation, later):
    result = make_runner(tmp_path, RefusingCA(failure)).process(SPEC)
    assert (result["action"], result["ssl_status"], result["retry"]) == ("failed", status, retry)
    assert (remediation is None) == (result["remediation"] is None) and (remediation or "") in (result["remediation"] or "")
    assert result["message"].endswith("A later run retries.") == later


def conflict(code):
    failure = AcmeProblem("creating the order: the CA answered %s: already has a replacement order" % code, code)
    failure.http_status = 409
    return failure


class ReplacesRefusingCA(ScriptedCA):
    """Refuses every order that carries replaces with ``refusal`` (Boulder: 409 alreadyReplaced; Pebble 2.6: 409 malformed)."""

    def __init__(self, refusal):
        super().__init__()
        self.refusal = refusal

    def new_order(self, names, deadline, replaces=None, profile=None):
        if replaces:
            self.orders.append({"names": list(names), "replaces": replaces, "profile": profile})
            raise self.refusal
        return super().new_order(names, deadline, replaces, profile)


@pytest.mark.parametrize("refusal, retried", [
    (conflict("alreadyReplaced"), True),
    (conflict("malformed"), True),  # Pebble 2.6
    (AcmeProblem("creating the order: the CA answered malformed: bad CertID", "malformed"), False),  # a 400: not about replaces
    (AcmeProblem("creating the order: the CA answered unauthorized: not your certificate", "unauthorized"), False),
])
def test_a_refused_replaces_is_ordered_once_more_without_it_only_for_a_conflict(tmp_path, refusal, retried):
    issued = make_runner(tmp_path, ScriptedCA()).process(SPEC)
    ca = ReplacesRefusingCA(refusal)
    result = make_runner(tmp_path, ca, force=True).process(SPEC)
    assert [bool(order["replaces"]) for order in ca.orders] == ([True, False] if retried else [True])
    assert result["action"] == ("renewed" if retried else "failed") and result["ssl_status"] == "issued"
    assert (result["serial"] != issued["serial"]) is retried


TWO_PER_3H = {"new_orders": {"count": 2, "window_hours": 3}}


def spec(name):
    return CertSpec(name, [name])


def test_an_order_past_the_limit_waits_for_its_turn_and_is_not_placed(tmp_path):
    ca = ScriptedCA()
    first = [make_runner(tmp_path, ca, ca_limits=TWO_PER_3H).process(spec("d%d.customer.example" % n)) for n in range(2)]
    assert [r["action"] for r in first] == ["issued", "issued"]
    runner = make_runner(tmp_path, ca, ca_limits=TWO_PER_3H)
    queued = [runner.process(spec("d%d.customer.example" % n)) for n in range(2, 5)]
    assert len(ca.orders) == 2, "no order past the limit reaches the CA"
    assert {(r["action"], r["ssl_status"], r["label"], r["reason"]) for r in queued} == {("none", "pending", "SSL Pending", limits.QUEUED)}
    turns = [run_module.parse_iso(r["retry_after"]) for r in queued]
    assert datetime.timedelta(0) <= turns[1] - turns[0] < datetime.timedelta(seconds=5), "the two orders leave the window one after the other"
    assert turns[0] - NOW > datetime.timedelta(hours=2, minutes=59), "three hours after the first order"
    assert turns[2] - turns[0] >= datetime.timedelta(hours=3) - datetime.timedelta(seconds=5), "the fifth waits a window more"
    assert "2 new orders per account per 3 hours" in queued[0]["message"] and queued[0]["retry_after"] in queued[0]["message"]
    assert "linkcert_ca_limits" in queued[0]["remediation"]
    state = json.loads((tmp_path / "state" / "d2.customer.example.json").read_text())
    assert state["retry_after"] == queued[0]["retry_after"] and state["reason"] == limits.QUEUED
    check = make_runner(tmp_path, ca, check_mode=True, ca_limits=TWO_PER_3H).process(spec("d9.customer.example"))
    assert check["reason"] == limits.QUEUED and not (tmp_path / "state" / "d9.customer.example.json").exists()
    unpaced = make_runner(tmp_path, ca, ca_limits="none").process(spec("d2.customer.example"))
    assert unpaced["action"] == "issued" and "retry_after" not in json.loads((tmp_path / "state" / "d2.customer.example.json").read_text())


def test_an_ari_renewal_is_exempt_but_its_reorder_without_replaces_is_not(tmp_path):
    ca = ScriptedCA()
    for n in range(2):
        make_runner(tmp_path, ca, ca_limits=TWO_PER_3H).process(spec("d%d.customer.example" % n))
    ca.window = (NOW - datetime.timedelta(days=2), NOW - datetime.timedelta(days=1))
    for n in range(2):
        ari_answer_expires(tmp_path, "d%d.customer.example" % n)
    renewed = make_runner(tmp_path, ca, ca_limits=TWO_PER_3H).process(spec("d0.customer.example"))
    assert renewed["action"] == "renewed" and ca.orders[-1]["replaces"], "the ledger is full, but replaces is exempt"
    refusing = ReplacesRefusingCA(conflict("alreadyReplaced"))
    refusing.window = ca.window
    waiting = make_runner(tmp_path, refusing, ca_limits=TWO_PER_3H).process(spec("d1.customer.example"))
    assert [bool(order["replaces"]) for order in refusing.orders] == [True], "the order without replaces would be counted: it waits"
    assert (waiting["action"], waiting["ssl_status"], waiting["reason"]) == ("none", "issued", limits.QUEUED)
    assert "installed certificate" in waiting["message"]


class RateLimitedCA(ScriptedCA):
    def new_order(self, names, deadline, replaces=None, profile=None):
        self.orders.append({"names": list(names), "replaces": replaces, "profile": profile})
        raise AcmeProblem('creating the order: the CA answered rateLimited: too many certificates (50) already issued for '
                          '"customer.example" in the last 168h0m0s', "rateLimited", retry_at=time.time() + 7200)


def test_a_429_past_the_run_blocks_what_it_refuses_for_the_next_orders(tmp_path):
    ca = RateLimitedCA()
    runner = make_runner(tmp_path, ca)
    refused = runner.process(spec("a.customer.example"))
    assert (refused["action"], refused["reason"]) == ("failed", "acme_rate_limited") and refused["retry_after"]
    blocked = runner.process(spec("b.customer.example"))
    assert len(ca.orders) == 1 and blocked["reason"] == limits.QUEUED
    assert abs(run_module.parse_iso(blocked["retry_after"]) - run_module.parse_iso(refused["retry_after"])) < datetime.timedelta(seconds=2)
    other = make_runner(tmp_path, ScriptedCA()).process(spec("a.other.example"))
    assert other["action"] == "issued", "another registered domain is not blocked"


def test_an_ari_renewal_is_not_counted_but_waits_out_a_429_of_its_names(tmp_path):
    ca = ScriptedCA()
    make_runner(tmp_path, ca).process(spec("a.customer.example"))
    refused = make_runner(tmp_path, RateLimitedCA()).process(spec("b.customer.example"))
    assert refused["reason"] == "acme_rate_limited"
    ca.window = (NOW - datetime.timedelta(days=2), NOW - datetime.timedelta(days=1))  # ARI: renew a.customer.example now
    ari_answer_expires(tmp_path, "a.customer.example")
    orders = len(ca.orders)
    waiting = make_runner(tmp_path, ca).process(spec("a.customer.example"))
    assert len(ca.orders) == orders, "the CA refused customer.example until its Retry-After: no order, replaces or not"
    assert (waiting["action"], waiting["ssl_status"], waiting["reason"]) == ("none", "issued", limits.QUEUED)
    assert waiting["retry_after"] == refused["retry_after"]
