# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""One run of acme_http01_cert: decide per certificate, issue what is due, report status.

Per certificate, under a per-domain lock: read the installed pair and the state
file, decide (``_acme_renewal.decide``), and only if due (and not held back by the
failed-validation guard) talk to the CA.  The CA client, the account key and the
account registration are created lazily, so a run with nothing due makes no
request at all (ARI queries excepted, where the CA offers ARI).  A failure never
touches the installed pair.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import os
import random
import re
import threading
import time
import typing as t
from pathlib import Path

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_challenge as challenge
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_chain
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_limits as limits
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_keys as keys
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_renewal as renewal
from ansible_collections.mailops.linkcert.plugins.module_utils import _status
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_client import AcmeClient, AcmeProblem
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_errors import FIX, LATER, AcmeFailure
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore, guard_until, iso, parse_iso, record_failure
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import CertStore
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_sync import account_key
from ansible_collections.mailops.linkcert.plugins.module_utils._dnsrun import HAS_PSL, organizational_domain
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain
from ansible_collections.mailops.linkcert.plugins.module_utils._pool import map_bounded
from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import View, make_resolver

# Failures the CA counts against the name (Let's Encrypt pauses after 5 an hour).
VALIDATION_FAILURES = frozenset(("acme_unauthorized", "acme_connection", "acme_dns", "acme_incorrect_response", "acme_caa", "acme_tls",
                                 "acme_rejected_identifier"))
FEATURES_MAX_AGE = datetime.timedelta(days=1)
# The problem types with which a CA refuses an order's replaces (RFC 9773); the order is placed again without it.
REPLACES_REFUSED = frozenset(("alreadyReplaced", "conflict"))
ACCOUNT_GONE = "accountDoesNotExist"
RATE_LIMITED = "rateLimited"
HTTP_CONFLICT = 409
# The installed files' paths are kept too, so a play can serve every certificate on record (not only this run's).
STATE_KEYS = ("domain", "names", "ssl_status", "label", "reason", "message", "remediation", "action", "held", "serial", "issuer",
              "not_before", "not_after", "renew_after", "privkey", "cert", "chain", "fullchain")
# Kept in the state file only while set: when a waiting order's turn comes (the watcher's next check follows it).
STATE_KEYS_WHILE_SET = ("retry_after",)
QUEUED_REMEDIATION = ("Nothing to do: the order is placed on its own when its turn comes. If the CA granted this account higher limits, "
                      "raise them in linkcert_ca_limits (the module's ca_limits).")


class Settings(t.NamedTuple):
    directory_url: str
    ca_bundle: t.Optional[str]
    account_key: str
    email: t.Optional[str]
    terms_agreed: bool
    eab: t.Optional[t.Tuple[str, str]]
    webroot: str
    cert_root: str
    state_root: str
    key_type: str
    reuse_key: bool
    renew_before: t.Union[str, int]
    profile: t.Optional[str]
    self_check: bool
    challenge_port: int
    resolver: t.Optional[View]
    timeout: float
    force: bool
    check_mode: bool
    workers: int = 8
    server_check: t.Optional[t.Tuple[str, ...]] = None
    preferred_chain: t.Optional[str] = None
    ca_limits: limits.Limits = limits.Limits()


def _disjoint_roots(roots: t.Mapping[str, str]) -> None:
    """No root inside another: nginx reads the webroot, the state root is 0700, the keys must never be under the webroot."""
    real = {option: os.path.realpath(path) for option, path in roots.items()}
    for inner, inner_path in real.items():
        for outer, outer_path in real.items():
            if inner != outer and os.path.commonpath([inner_path, outer_path]) == outer_path:
                raise InputError("%s (%s) must not be %s %s (%s): keep the three roots apart, for example as sibling directories"
                                 % (inner, roots[inner], "the same as" if inner_path == outer_path else "inside", outer, roots[outer]),
                                 item=roots[inner])


#: RFC 7518 3.2: an HS256 key MUST be at least the hash's size, 256 bits (CAs hand out 32 to 64 bytes). Pebble 2.6 and
#: Boulder refuse a shorter one with a bare "error in cryptographic primitive".
EAB_KEY_MIN_BYTES = 32
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def _check_eab_key(key: str) -> str:
    """The EAB MAC key as the CA gave it: base64url of at least 32 bytes (a key cut short by a paste is the usual cause).
    The message names the option and the decoded length, never the key."""
    text = key.strip()
    body = text.rstrip("=")
    try:
        if not _BASE64URL.match(text):
            raise binascii.Error("not base64url")
        size = len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except binascii.Error as error:  # an alphabet or a length no base64url text has
        raise InputError("eab_hmac_key is not base64url text (A-Z, a-z, 0-9, '-' and '_'): copy the MAC key exactly as the CA "
                         "shows it", item="eab_hmac_key") from error
    if size < EAB_KEY_MIN_BYTES:
        raise InputError("eab_hmac_key decodes to %d bytes; an HS256 MAC key has at least %d (RFC 7518 3.2), so it was probably "
                         "cut short: copy the whole key the CA gave" % (size, EAB_KEY_MIN_BYTES), item="eab_hmac_key")
    return text


def settings_from_options(p: t.Mapping[str, t.Any], check_mode: bool = False) -> Settings:
    """Validate the module's options (the renewal runner's configuration uses the same keys) and build Settings.

    Raises InputError naming the bad option before anything is touched.
    """
    if not re.match(r"^https?://[^\s/]+", p["acme_directory"]):
        raise InputError("acme_directory %r is not an http(s) URL" % p["acme_directory"], item=p["acme_directory"])
    if p.get("acme_ca_bundle") and not os.path.isfile(p["acme_ca_bundle"]):
        raise InputError("acme_ca_bundle %s does not exist" % p["acme_ca_bundle"], item=p["acme_ca_bundle"])
    roots = ("webroot", "cert_root", "state_root")
    for option in roots:
        if not os.path.isabs(p[option]):
            raise InputError("%s must be an absolute path, got %r" % (option, p[option]), item=p[option])
    _disjoint_roots({option: p[option] for option in roots})
    if bool(p.get("eab_kid")) != bool(p.get("eab_hmac_key")):
        raise InputError("give both eab_kid and eab_hmac_key, or neither", item="eab_kid")
    eab_key = _check_eab_key(str(p["eab_hmac_key"])) if p.get("eab_hmac_key") else None
    renew_before: t.Union[str, int] = str(p.get("renew_before", "auto")).strip().lower()
    if renew_before != "auto":
        if not str(renew_before).isdigit() or not 0 < int(renew_before) < 3650:
            raise InputError("renew_before must be 'auto' or a number of days, got %r" % p["renew_before"], item="renew_before")
        renew_before = int(renew_before)
    timeout, workers, port = float(p.get("timeout", 120)), int(p.get("workers", 8)), int(p.get("challenge_port", 80))
    if not 0 < timeout <= 3600 or not 1 <= workers <= 64 or not 0 < port < 65536:
        raise InputError("timeout must be in (0, 3600], workers in [1, 64], challenge_port in [1, 65535]", item="timeout")
    server_check = p.get("server_check")
    if server_check is not None and (isinstance(server_check, (str, bytes)) or not server_check
                                     or not all(isinstance(arg, str) and arg and "\0" not in arg for arg in server_check)):
        raise InputError("server_check must be a command as a non-empty list of arguments, for example [nginx, -t], got %r" % (server_check,),
                         item="server_check")
    return Settings(
        directory_url=p["acme_directory"], ca_bundle=p.get("acme_ca_bundle") or None,
        account_key=p.get("account_key") or os.path.join(p["state_root"], "account.key"),
        email=p.get("account_email") or None, terms_agreed=bool(p.get("terms_agreed")),
        eab=(p["eab_kid"], eab_key) if eab_key else None,
        webroot=p["webroot"], cert_root=p["cert_root"], state_root=p["state_root"],
        key_type=p.get("key_type") or "ec256", reuse_key=bool(p.get("reuse_key")), renew_before=renew_before,
        profile=p.get("profile") or None, self_check=bool(p.get("self_check", True)), challenge_port=port,
        resolver=make_resolver(p["resolvers"], 5.0) if p.get("resolvers") else None,
        timeout=timeout, force=bool(p.get("force")), check_mode=check_mode, workers=workers,
        server_check=tuple(server_check) if server_check else None, preferred_chain=_acme_chain.check_preferred(p.get("preferred_chain")),
        ca_limits=limits.limits_from(p.get("ca_limits"), p["acme_directory"]),
    )


class CertSpec(t.NamedTuple):
    domain: str
    names: t.List[str]
    # Set when DNS or CAA no longer allow an order (``_status.acme_input``): nothing is ordered, the installed
    # certificate stays as it is, and the hold is reported.
    hold: t.Optional[t.Dict[str, t.Any]] = None


def cert_specs(certificates: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[CertSpec]:
    """``[{domain, alt_names}]`` → validated, normalised CertSpecs; InputError names the first bad item."""
    specs: t.List[CertSpec] = []
    seen: t.Dict[str, int] = {}
    for index, entry in enumerate(certificates, start=1):
        where = "certificates[%d]" % index
        domain = normalize_domain(entry.get("domain"), what="%s.domain" % where)
        names = [domain]
        for alt in entry.get("alt_names") or []:
            name = normalize_domain(alt, what="%s.alt_names item" % where)
            if name not in names:
                names.append(name)
        if domain in seen:
            raise InputError("%s: %s is listed twice (also as certificates[%d])" % (where, domain, seen[domain]), item=domain)
        seen[domain] = index
        hold = entry.get("hold")
        if hold is not None and not (isinstance(hold, dict) and isinstance(hold.get("reason"), str) and hold["reason"]
                                     and isinstance(hold.get("explanation"), str)):
            raise InputError("%s.hold must be a dict with a reason and an explanation" % where, item=domain)
        specs.append(CertSpec(domain, names, dict(hold) if hold else None))
    return specs


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def split_chain(pem: bytes) -> t.Tuple[bytes, bytes]:
    marker = b"-----END CERTIFICATE-----"
    blocks = [block.strip() + b"\n" + marker + b"\n" for block in pem.split(marker) if block.strip()]
    if not blocks:
        raise LinkcertError("the CA returned no certificate", reason="ca_protocol_error")
    return blocks[0], b"".join(blocks[1:])


# (argv) -> (exit status, stdout, stderr): AnsibleModule.run_command in the module, subprocess in the renewal runner.
RunCommand = t.Callable[[t.Sequence[str]], t.Tuple[int, str, str]]


class Runner:
    def __init__(self, settings: Settings, run_command: t.Optional[RunCommand] = None) -> None:
        if settings.server_check and run_command is None:
            raise InputError("server_check needs a way to run commands", item="server_check")
        self.s = settings
        self._run_command = run_command
        self._server_lock = threading.Lock()
        self._server_verdict: t.Optional[t.Tuple[bool, str]] = None
        self._sweep_lock = threading.Lock()
        self._swept = False
        self.store = CertStore(settings.cert_root)
        self.states = StateStore(settings.state_root)
        self._client: t.Optional[AcmeClient] = None
        self._earlier_requests = 0  # made by a client dropped with its account (_forget_account)
        self._client_lock = threading.Lock()
        self.account_uri: t.Optional[str] = None
        account = self.states.load_account(settings.directory_url) if Path(settings.state_root).is_dir() else None
        self._account_record = account or {}
        if account:
            self.account_uri = account.get("uri")
        self._rng = random.Random()
        self.pacer = limits.Pacer(self.states, settings.directory_url, settings.ca_limits, _registered_domain, check_mode=settings.check_mode)

    # --------------------------------------------------------------- CA

    @property
    def ca_requests(self) -> int:
        return self._earlier_requests + (self._client.requests if self._client else 0)

    def features(self) -> t.Dict[str, t.Any]:
        """Directory features from the cache (no request), refreshed whenever the directory is fetched."""
        cached = self._account_record.get("features")
        if cached is not None:
            return dict(cached)
        return {"ari": False, "renewal_info_url": None, "profiles": {}, "unknown": True}

    def client(self, deadline: float) -> AcmeClient:
        """The CA client with a registered account: created on first need, once per run."""
        with self._client_lock:
            if self._client is None:
                key = self._account_key()
                client = AcmeClient(self.s.directory_url, self.s.ca_bundle, key, timeout=max(5.0, self.s.timeout))
                directory = client.directory(deadline)
                thumb = keys.thumbprint(client.jwk)
                record = dict(self._account_record)
                if record.get("uri") and record.get("thumbprint") == thumb:
                    client.account_uri = record["uri"]
                else:
                    record.update(directory=self.s.directory_url, uri=client.account(self.s.email, self.s.terms_agreed, self.s.eab, deadline),
                                  thumbprint=thumb, created=iso(utcnow()))
                features = renewal.directory_features(directory)
                if record.get("features") != features:  # stamped only on change, so an unchanged account is not rewritten
                    record.update(features=features, features_at=iso(utcnow()))
                if record != self._account_record:
                    self.states.save_account(self.s.directory_url, record)
                    self._account_record = record
                self.account_uri = client.account_uri
                self._client = client
            return self._client

    def _forget_account(self) -> None:
        """The CA no longer knows the account on record (accountDoesNotExist: deactivated, or the CA's database reset):
        drop its URL, so the next certificate of this run, or the next run, registers the key again."""
        with self._client_lock:
            record = {key: val for key, val in self._account_record.items() if key not in ("uri", "thumbprint", "created")}
            if record != self._account_record:
                self.states.save_account(self.s.directory_url, record)
                self._account_record = record
            self._earlier_requests += self._client.requests if self._client else 0
            self._client = None
            self.account_uri = None

    def _server_ready(self, domain: str) -> None:
        """Run ``server_check`` (once per run, on the first certificate that is due) and raise if it fails.

        A web server that cannot load its configuration could not serve a new certificate either: ordering one
        would spend the CA's budget for a certificate nobody gets, so nothing is ordered until it is fixed.
        """
        if not self.s.server_check or self._run_command is None:
            return
        with self._server_lock:
            if self._server_verdict is None:
                command = " ".join(self.s.server_check)
                try:
                    rc, out, err = self._run_command(self.s.server_check)
                except OSError as exc:
                    rc, out, err = 127, "", str(exc)
                if rc == 0:
                    self._server_verdict = (True, "")
                else:
                    detail = " ".join((err or out or "no output").strip().split("\n")[-3:])
                    self._server_verdict = (False, "%s failed (exit %d), so nothing was ordered: the web server could not load a new "
                                                   "certificate. Fix what it reports, then re-run: %s" % (command, rc, detail))
        ok, message = self._server_verdict
        if not ok:
            raise LinkcertError(message, item=domain, reason="server_config_broken")

    def _account_key(self) -> t.Any:
        return account_key(self.s.account_key, create=True)[0]

    # ------------------------------------------------------------- run

    def run(self, specs: t.Sequence[CertSpec]) -> t.List[t.Dict[str, t.Any]]:
        """Process every certificate, ``workers`` at a time, results in the given order."""
        return map_bounded(self.process, specs, self.s.workers)

    def process(self, spec: CertSpec) -> t.Dict[str, t.Any]:
        """Handle one certificate; the result carries ``duration_ms``, this certificate's own wall time."""
        started = time.monotonic()
        result = self._process(spec, started + self.s.timeout)
        result["duration_ms"] = round((time.monotonic() - started) * 1000.0, 1)
        return result

    def _process(self, spec: CertSpec, deadline: float) -> t.Dict[str, t.Any]:
        base = {"domain": spec.domain, "names": spec.names, "changed": False}
        base.update(self.store.paths(spec.domain))
        if spec.hold is not None and self._installed(spec.domain)[0] is None:
            # Held and nothing installed: nothing to keep or to record; the play words the status from DNS and CAA.
            return self._held(base, None, spec.hold)
        if self.s.check_mode:  # reads only: no lock file is created
            return self._locked(spec, base, deadline)
        try:
            with self.states.lock(spec.domain, timeout=min(self.s.timeout, 30.0)):
                return self._locked(spec, base, deadline)
        except LinkcertError as exc:
            if exc.reason != "locked":
                raise
            info = self._installed(spec.domain)[0]
            return self._report(base, info, None, "none", "locked", "%s Nothing was done; the other run finishes the job." % exc.msg)

    def _installed(self, domain: str) -> t.Tuple[t.Optional[t.Any], t.Optional[t.Dict[str, bytes]]]:
        existing = self.store.read(domain)
        if not existing:
            return None, None
        try:
            info = renewal.cert_info(existing["cert"])
            key = keys.load_key_pem(existing["privkey"], item=domain)
        except LinkcertError:
            return None, existing
        if not keys.public_key_matches(key, existing["cert"]):
            return None, existing
        return info, existing

    def _locked(self, spec: CertSpec, base: t.Dict[str, t.Any], deadline: float) -> t.Dict[str, t.Any]:
        now = utcnow()
        # What is on disk, to compare with at the end: the flow below updates ``state`` in place (ARI answer,
        # last attempt, failure ledger), and each such change must be saved even when the status is the same.
        loaded = self.states.load(spec.domain)
        state = copy.deepcopy(loaded)
        info, existing = self._installed(spec.domain)
        if spec.hold is not None:
            result = self._held(base, info, spec.hold)
            return result if self.s.check_mode else self._save(spec.domain, loaded, state, result, attempted=False)
        ari_at = self._ari(spec.domain, info, state, deadline)
        features = self.features()
        decision = renewal.decide(info, spec.names, self.s.key_type, now, self.s.renew_before, force=self.s.force,
                                  ari_renew_at=ari_at, ari_offered=bool(features.get("ari")))
        if not decision.due:
            result = self._report(base, info, decision, "none", decision.reason, decision.message)
            return self._save(spec.domain, loaded, state, result, attempted=False)
        failed_limit = self.s.ca_limits.failed_authorizations or limits.Limit(5, datetime.timedelta(hours=1))
        held = guard_until(state, now, threshold=failed_limit.count, window=failed_limit.window, reasons=VALIDATION_FAILURES)
        if held and not self.s.force:
            result = self._report(base, info, decision, "none", "rate_limit_guard",
                                  "%s failed validation %d times within %s; no new order before %s, so the CA does not pause the name."
                                  % (spec.domain, failed_limit.count, failed_limit.window, iso(held)), retry_after=iso(held))
            return self._save(spec.domain, loaded, state, result, attempted=False)
        action = "renewed" if info else "issued"
        if self.s.check_mode and self.account_uri:
            try:  # reads the ledger only
                self.pacer.admit(self.account_uri, spec.names, now, exempt=bool(decision.replaces))
            except limits.Queued as exc:
                return self._queued(base, info, decision, exc)
        if self.s.check_mode:
            result = self._report(base, info, decision, action, decision.reason, "Would %s: %s" % ("renew" if info else "issue", decision.message))
            result["changed"] = True
            return result
        state["last_attempt"] = iso(now)
        try:
            self._server_ready(spec.domain)
            key_pem, cert_pem, chain_pem = self._issue(spec, existing, decision, deadline)
            # A failed install (a full disk) is this certificate's failure, like a CA error: the other
            # certificates of the run go on, and the working pair is untouched (CertStore switches whole versions).
            self.store.install(spec.domain, key_pem, cert_pem, chain_pem)
        except limits.Queued as exc:  # not a failure: no order was placed, and the turn is known
            return self._save(spec.domain, loaded, state, self._queued(base, info, decision, exc), attempted=False)
        except LinkcertError as exc:
            if isinstance(exc, AcmeFailure) and exc.code == ACCOUNT_GONE:
                self._forget_account()
            state = record_failure(state, utcnow(), exc.reason, exc.msg)
            result = self._failed(base, info, exc)
            try:
                return self._save(spec.domain, loaded, state, result, attempted=True)
            except LinkcertError as save_error:  # the state root is full too: still answer for this certificate
                result["message"] += " Its state file could not be updated either: %s" % save_error.msg
                return result
        new_info = renewal.cert_info(cert_pem)
        state["last_success"] = iso(utcnow())
        state.pop("ari", None)
        # The new certificate's renewal window is asked at once (ARI, where the CA offers it) on the connection this run
        # has open: the runs that follow find it kept until the CA's Retry-After, and a timer run with nothing due
        # contacts the CA for nothing. A lookup that fails costs nothing: the next run asks again.
        ari_at = self._ari(spec.domain, new_info, state, deadline)
        after = renewal.decide(new_info, spec.names, self.s.key_type, utcnow(), self.s.renew_before, ari_renew_at=ari_at,
                               ari_offered=bool(self.features().get("ari")))
        result = self._report(base, new_info, after, action, action, "%s a certificate for %s, valid until %s." % (
            "Renewed" if info else "Issued", ", ".join(spec.names), iso(new_info.not_after)))
        result["changed"] = True
        return self._save(spec.domain, loaded, state, result, attempted=True)

    def _ari(self, domain: str, info: t.Optional[t.Any], state: t.Dict[str, t.Any], deadline: float) -> t.Optional[datetime.datetime]:
        """The ARI renewal time for the installed certificate: cached until Retry-After, else asked (never in check mode)."""
        if info is None or not info.ari_cert_id or self.s.renew_before != "auto":
            return None
        features = self.features()
        if not features.get("ari") and not features.get("unknown"):
            return None
        cached = state.get("ari") or {}
        now = utcnow()
        kept = cached.get("cert_id") == info.ari_cert_id and ("renew_at" in cached)
        if kept and (self.s.check_mode or parse_iso(cached.get("retry_after", "1970-01-01T00:00:00Z")) > now):
            return parse_iso(cached["renew_at"]) if cached.get("renew_at") else None
        if self.s.check_mode:
            return None
        try:
            answer = self.client(deadline).renewal_info(info.ari_cert_id, deadline, domain)
        except LinkcertError:
            return None
        if answer is None:
            return None
        window = renewal.parse_ari(answer[0], answer[1], now)
        if window is None:
            return None
        # Kept either way; a window that says nothing about when is not followed (the lifetime rule decides).
        renew_at = renewal.pick_in_window(window, self._rng) if renewal.window_says_when(window, info, now) else None
        state["ari"] = {"cert_id": info.ari_cert_id, "start": iso(window.start), "end": iso(window.end),
                        "renew_at": iso(renew_at) if renew_at else None, "retry_after": iso(window.retry_after),
                        "explanation_url": window.explanation_url}
        return renew_at

    def _issue(self, spec: CertSpec, existing: t.Optional[t.Dict[str, bytes]], decision: t.Any,
               deadline: float) -> t.Tuple[bytes, bytes, bytes]:
        key = None
        if self.s.reuse_key and existing and existing.get("privkey"):
            try:
                candidate = keys.load_key_pem(existing["privkey"], item=spec.domain)
                key = candidate if keys.key_type_of(candidate) == self.s.key_type else None
            except LinkcertError:
                key = None
        key = key or keys.generate_key(self.s.key_type)
        csr = keys.make_csr(key, spec.names)
        client = self.client(deadline)
        profile = renewal.check_profile(self.s.profile, self.features()) if self.s.profile else None
        account = str(client.account_uri)
        # An ARI renewal (replaces) is exempt from the CA's limits: not counted, and held back only by a 429's block.
        token = self.pacer.admit(account, spec.names, utcnow(), exempt=bool(decision.replaces))
        tokens = [] if decision.replaces else [token]
        issued = False
        try:
            order_url, order = self._place_order(client, spec, decision, profile, deadline, account, tokens)
            self._authorize(client, spec, order, deadline)
            if order.get("status") in ("pending", "ready"):
                order = client.wait_valid(order_url, deadline, spec.domain, pending=("pending",))
            if order.get("status") == "ready":
                client.finalize(order["finalize"], csr, deadline, spec.domain)
                order = client.wait_valid(order_url, deadline, spec.domain, pending=("ready", "processing"))
            if order.get("status") != "valid" or not order.get("certificate"):
                error = order.get("error") or {}
                raise LinkcertError("the order for %s ended %s: %s" % (spec.domain, order.get("status"), error.get("detail", "no detail")),
                                    item=spec.domain, reason="acme_order_%s" % order.get("status"))
            leaf, chain = split_chain(self._download(client, order["certificate"], spec.domain, deadline))
            if not keys.public_key_matches(key, leaf):
                raise LinkcertError("the CA returned a certificate for another key", item=spec.domain, reason="ca_protocol_error")
            issued = True
        except AcmeFailure as exc:
            if exc.code == RATE_LIMITED and exc.retry_at:  # a 429 past this run: nothing of what it refuses is ordered before its end
                self._pacing(self.pacer.rate_limited, account, spec.names, exc.detail or exc.msg,
                             datetime.datetime.fromtimestamp(exc.retry_at, datetime.timezone.utc), utcnow())
            raise
        finally:  # a reservation becomes a certificate, or is dropped (the order still counts)
            for token in tokens:
                self._pacing(self.pacer.settle, account, token, issued, utcnow())
        return keys.key_to_pem(key), leaf, chain

    def _place_order(self, client: AcmeClient, spec: CertSpec, decision: t.Any, profile: t.Optional[str], deadline: float,
                     account: str, tokens: t.List[str]) -> t.Tuple[str, t.Dict[str, t.Any]]:
        try:
            return client.new_order(spec.names, deadline, replaces=decision.replaces, profile=profile)
        except AcmeFailure as exc:
            # RFC 9773: a CA that refuses the replaces (409: alreadyReplaced, or a certificate it does not know as ours)
            # is asked once more without it; the renewal goes ahead as a new order, which the CA's limits count.
            # Pebble 2.6 says 409 with the type malformed, Boulder 409 alreadyReplaced: the status is what counts.
            if not decision.replaces or (exc.code not in REPLACES_REFUSED and exc.http_status != HTTP_CONFLICT):
                raise
        tokens.append(self.pacer.admit(account, spec.names, utcnow()))
        return client.new_order(spec.names, deadline, profile=profile)

    def _pacing(self, call: t.Callable[..., None], *args: t.Any) -> None:
        """Ledger bookkeeping once an order is placed: a ledger that cannot be written (a full disk) must not cost the
        certificate; the next admission counts from what the file still says."""
        try:
            call(*args)
        except LinkcertError:
            pass

    def _download(self, client: AcmeClient, url: str, domain: str, deadline: float) -> bytes:
        """The issued chain: the CA's default, or with ``preferred_chain`` the first alternate whose topmost
        certificate that CA issued (the default again when none is; alternates are fetched only when needed)."""
        preferred = self.s.preferred_chain
        if not preferred:
            return client.download(url, deadline, domain)
        default, alternates = client.download_with_alternates(url, deadline, domain)
        if _acme_chain.topmost_issuer(default) == preferred or not alternates:
            return default
        chains = [default] + [client.download(other, deadline, domain) for other in alternates]
        return _acme_chain.choose(chains, preferred)[0]

    def _sweep_challenges(self) -> None:
        """Once per run, before the first token is published: remove tokens that killed runs left behind."""
        with self._sweep_lock:
            if not self._swept:
                self._swept = True
                challenge.sweep(self.s.webroot, time.time())

    def _authorize(self, client: AcmeClient, spec: CertSpec, order: t.Dict[str, t.Any], deadline: float) -> None:
        self._sweep_challenges()
        published: t.List[Path] = []
        answered: t.List[t.Tuple[str, str]] = []
        check = challenge.SelfCheck(self.s.resolver, self.s.challenge_port, min(10.0, max(1.0, deadline - time.monotonic())))
        try:
            for authz_url in order.get("authorizations", []):
                authz = dict(client.get(authz_url, deadline, spec.domain).json())
                name = authz.get("identifier", {}).get("value", spec.domain)
                if authz.get("status") == "valid":
                    continue
                chall = next((c for c in authz.get("challenges", []) if c.get("type") == "http-01"), None)
                if chall is None:
                    raise LinkcertError("the CA offers no http-01 challenge for %s" % name, item=name, reason="no_http01")
                key_authz = keys.key_authorization(chall["token"], client.jwk)
                published.append(challenge.publish(self.s.webroot, chall["token"], key_authz))
                if self.s.self_check:
                    challenge.self_check(check, name, chall["token"], key_authz)
                answered.append((authz_url, name))
                client.answer(chall["url"], deadline, name)
            for authz_url, name in answered:
                body = client.wait_valid(authz_url, deadline, name)
                if body.get("status") != "valid":
                    raise _challenge_problem(body, name)
        finally:
            for path in published:
                challenge.withdraw(path)

    # ---------------------------------------------------------- results

    def _report(self, base: t.Dict[str, t.Any], info: t.Optional[t.Any], decision: t.Optional[t.Any], action: str, reason: str,
                message: str, **extra: t.Any) -> t.Dict[str, t.Any]:
        valid = info is not None and renewal.valid_at(info, utcnow())
        status = _status.ISSUED if valid else _status.PENDING
        result = dict(base)
        result.update(_status.status_entry(base["domain"], status, reason, message, None, action=action))
        result.update(_cert_fields(info))
        result["renew_after"] = iso(decision.renew_after) if decision is not None and decision.renew_after else None
        result.update(extra)
        return result

    def _queued(self, base: t.Dict[str, t.Any], info: t.Optional[t.Any], decision: t.Any, exc: limits.Queued) -> t.Dict[str, t.Any]:
        """An order that waits for the CA's rate limit: SSL Pending (SSL Issued while the installed one is valid), its turn."""
        message = exc.msg
        if info is not None and renewal.valid_at(info, utcnow()):
            message = "Renewal is due but waits: %s The installed certificate (valid until %s) is still served." % (message, iso(info.not_after))
        result = self._report(base, info, decision, "none", limits.QUEUED, message, retry_after=iso(exc.turn.at))
        result["remediation"] = QUEUED_REMEDIATION
        return result

    def _held(self, base: t.Dict[str, t.Any], info: t.Optional[t.Any], hold: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
        """A certificate DNS or CAA hold back: no order; the installed one (if any) is kept and still served."""
        valid = info is not None and renewal.valid_at(info, utcnow())
        status, reason, message = _status.held(hold["reason"], hold["explanation"], valid)
        if info is not None:
            message += " The installed certificate (serial %s, valid until %s) %s; nothing is ordered until this is fixed." % (
                info.serial_hex, iso(info.not_after), "is still served" if valid else "is no longer valid")
        result = dict(base)
        result.update(_status.status_entry(base["domain"], status, reason, message, hold.get("remediation"), action="none", held=True))
        result.update(_cert_fields(info))
        result["renew_after"] = None
        return result

    def _failed(self, base: t.Dict[str, t.Any], info: t.Optional[t.Any], exc: LinkcertError) -> t.Dict[str, t.Any]:
        valid = info is not None and utcnow() < info.not_after
        rule = exc.rule if isinstance(exc, AcmeFailure) else None
        customer = isinstance(exc, challenge.ChallengeFailed) or (rule is not None and rule.customer)
        # What happens next, said once: retried by a later run (the timer, the pending watcher), or only once the setup is fixed.
        retry = rule.retry if rule is not None else LATER
        remediation = rule.remediation if rule is not None and not customer else None
        if valid:
            status, message = _status.ISSUED, "Renewal failed, the installed certificate is untouched and still served: %s" % exc.msg
        elif customer:
            status, message = _status.UNKNOWN, exc.msg
        elif retry == FIX:
            status, message = _status.PENDING, exc.msg
        else:
            status, message = _status.PENDING, "%s A later run retries." % exc.msg
        result = dict(base)
        result.update(_status.status_entry(base["domain"], status, exc.reason, message, remediation, action="failed", retry=retry))
        result.update(_cert_fields(info))
        result["renew_after"] = None
        retry_at = getattr(exc, "retry_at", None)
        if retry_at:
            result["retry_after"] = iso(datetime.datetime.fromtimestamp(retry_at, datetime.timezone.utc))
        return result

    def _save(self, domain: str, loaded: t.Mapping[str, t.Any], state: t.Dict[str, t.Any], result: t.Dict[str, t.Any],
              attempted: bool) -> t.Dict[str, t.Any]:
        """Write the state file when anything differs from what was read (``loaded``); return ``result``."""
        if self.s.check_mode:
            return result
        new_state = dict(state)
        new_state.update({key: result.get(key) for key in STATE_KEYS})
        for key in STATE_KEYS_WHILE_SET:
            if result.get(key):
                new_state[key] = result[key]
            else:
                new_state.pop(key, None)
        if not attempted:
            new_state["action"] = state.get("action", result["action"])
        if new_state != loaded:
            self.states.save(domain, new_state)
        return result


def _registered_domain(name: str) -> str:
    """The registered domain of ``name`` (Public Suffix List); the name itself when publicsuffixlist is missing."""
    return organizational_domain(name) if HAS_PSL else name


def _cert_fields(info: t.Optional[t.Any]) -> t.Dict[str, t.Any]:
    if info is None:
        return {"serial": None, "issuer": None, "not_before": None, "not_after": None}
    return {"serial": info.serial_hex, "issuer": info.issuer, "not_before": iso(info.not_before), "not_after": iso(info.not_after)}


def _challenge_problem(body: t.Dict[str, t.Any], name: str) -> LinkcertError:
    for chall in body.get("challenges", []):
        error = chall.get("error")
        if error:
            code = str(error.get("type", "")).rsplit(":", 1)[-1] or "unauthorized"
            return AcmeProblem("the CA could not validate %s: %s" % (name, error.get("detail", code)), code, name)
    return AcmeProblem("the authorization for %s ended %s" % (name, body.get("status")), "unauthorized", name)
