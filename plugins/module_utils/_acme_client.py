# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The ACME protocol (RFC 8555), behind a few intent-level calls, on certbot's ``acme`` library.

* ``AcmeClient.account``: register once (terms, optional external account binding), or
  reuse the stored account URL without a request.
* ``AcmeClient.new_order`` / ``authorization`` / ``answer`` / ``wait_valid`` /
  ``finalize``: one order, with ``replaces`` (RFC 9773) and ``profile`` when asked.
* Every request goes through ``_call``: ``badNonce`` is retried, 429 and 5xx are retried
  with bounded backoff honouring ``Retry-After``, all within the certificate's
  deadline; RFC 7807 problem documents become a ``reason`` code and a message.

Each worker thread gets its own ``ClientNetwork`` (nonces and HTTP sessions are not
shared between threads); the directory and the account URL are shared.
"""

from __future__ import annotations

import threading
import time
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_keys import jwk_and_alg
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError, short_error

try:
    import josepy as jose
    import requests
    from acme import client as acme_client
    from acme import errors as acme_errors
    from acme import messages
    HAS_ACME = True
    ACME_IMPORT_ERROR: t.Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_ACME = False
    ACME_IMPORT_ERROR = exc

USER_AGENT = "mailops.linkcert/0.1 (acme-python)"
_RETRY_CODES = frozenset(("badNonce", "rateLimited", "serverInternal"))
_MAX_RETRIES = 5
# Problems the customer (or the ESP's setup) must fix: never issued for such a domain → "unknown".
CUSTOMER_PROBLEMS = frozenset(("caa", "dns", "connection", "unauthorized", "incorrectResponse", "rejectedIdentifier", "tls"))


def snake(code: str) -> str:
    out = []
    for char in code:
        if char.isupper():
            out.append("_" + char.lower())
        else:
            out.append(char)
    return "".join(out).strip("_")


class AcmeProblem(LinkcertError):
    """An RFC 7807 problem from the CA (``reason`` is ``acme_`` + the snake-cased type)."""

    def __init__(self, message: str, code: str, item: t.Optional[str] = None, retry_at: t.Optional[float] = None) -> None:
        super().__init__(message, item=item, reason="acme_" + snake(code))
        self.code = code
        self.retry_at = retry_at

    @property
    def customer_must_fix(self) -> bool:
        return self.code in CUSTOMER_PROBLEMS


def problem_text(error: t.Any) -> str:
    """A readable one-liner of a problem document, with its sub-problems."""
    parts = [str(getattr(error, "detail", "") or getattr(error, "title", "") or error)]
    for sub in getattr(error, "subproblems", None) or []:
        identifier = getattr(getattr(sub, "identifier", None), "value", "")
        parts.append("%s: %s" % (identifier, getattr(sub, "detail", sub)))
    return "; ".join(p for p in parts if p)


class _RawJSON(jose.JSONDeSerializable if HAS_ACME else object):  # type: ignore[misc]
    """A JSON body the acme library has no message class for (a new order with ``replaces``)."""

    def __init__(self, data: t.Dict[str, t.Any]) -> None:
        self.data = data

    def to_partial_json(self) -> t.Dict[str, t.Any]:
        return self.data

    @classmethod
    def from_json(cls, jobj: t.Any) -> "_RawJSON":
        return cls(dict(jobj))


class _Network(acme_client.ClientNetwork if HAS_ACME else object):  # type: ignore[misc]
    """A ClientNetwork that remembers the last response, for its Retry-After header."""

    last_response: t.Any = None

    def _send_request(self, method: str, url: str, *args: t.Any, **kwargs: t.Any) -> t.Any:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response


def _retry_after_seconds(response: t.Any) -> t.Optional[float]:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        moment = acme_client.ClientV2.retry_after(response, 0)
        return max(0.0, (moment - moment.now()).total_seconds())


class AcmeClient:
    """One ACME directory and account, used from several threads."""

    def __init__(self, directory_url: str, ca_bundle: t.Optional[str], account_key: t.Any, timeout: float = 30.0) -> None:
        self.directory_url = directory_url
        self.verify: t.Union[str, bool] = ca_bundle or True
        self.key = account_key
        self.jwk, self.alg = jwk_and_alg(account_key)
        self.timeout = timeout
        self.account_uri: t.Optional[str] = None
        self._directory: t.Optional[t.Dict[str, t.Any]] = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self.requests = 0

    # ----------------------------------------------------------- plumbing

    def _net(self) -> t.Any:
        net = getattr(self._local, "net", None)
        if net is None:
            net = _Network(self.jwk, alg=self.alg, verify_ssl=self.verify, user_agent=USER_AGENT, timeout=int(max(5, self.timeout)))
            # Proxy settings are read from the environment once, not on every request (requests re-reads
            # them per request otherwise, a measurable cost over hundreds of certificates).
            proxies = requests.utils.get_environ_proxies(self.directory_url)
            net.session.trust_env = False
            net.session.proxies.update(proxies)
            self._local.net = net
        if self.account_uri and (net.account is None or net.account.uri != self.account_uri):
            net.account = messages.RegistrationResource(body=messages.Registration(), uri=self.account_uri)
        return net

    def _call(self, what: str, action: t.Callable[[], t.Any], deadline: float, item: t.Optional[str] = None) -> t.Any:
        """Run one protocol request with bounded retries (badNonce, 429, 5xx, network errors)."""
        delay = 0.25
        for attempt in range(_MAX_RETRIES + 1):
            self.requests += 1
            try:
                return action()
            except messages.Error as error:
                code = str(error.code or "serverInternal")
                wait = _retry_after_seconds(getattr(self._net(), "last_response", None))
                if code not in _RETRY_CODES or attempt == _MAX_RETRIES:
                    retry_at = time.time() + wait if wait is not None else None
                    raise AcmeProblem("%s: the CA answered %s: %s" % (what, code, problem_text(error)), code, item, retry_at) from None
            except acme_errors.ConflictError:
                raise
            except (requests.exceptions.SSLError,) as error:
                text = short_error(error)
                if "not yet valid" in text or "has expired" in text:
                    raise LinkcertError("%s: the CA's TLS certificate is not valid at this host's time, %s (%s). Check this host's clock "
                                        "(timedatectl, NTP); verification is never switched off." % (
                                            what, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), text),
                                        item=item, reason="host_clock") from None
                raise LinkcertError("%s: the CA's TLS certificate is not trusted (%s). Give the CA's root in acme_ca_bundle; "
                                    "verification is never switched off." % (what, text), item=item, reason="ca_untrusted") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
                if attempt == _MAX_RETRIES or time.monotonic() + delay > deadline:
                    raise LinkcertError("%s: the CA at %s cannot be reached (%s)." % (what, self.directory_url, short_error(error)),
                                        item=item, reason="ca_unreachable") from None
                wait = None
            except acme_errors.ClientError as error:
                status = getattr(getattr(error, "args", [None])[0], "status_code", None)
                if status is None or status < 500 or attempt == _MAX_RETRIES:
                    raise LinkcertError("%s: unexpected answer from the CA (%s)." % (what, short_error(error)), item=item,
                                        reason="ca_protocol_error") from None
                wait = _retry_after_seconds(error.args[0])
            pause = max(delay, min(wait, 60.0)) if wait is not None else delay
            if time.monotonic() + pause > deadline:
                raise LinkcertError("%s: the CA asked to retry after %.0f s, past this certificate's deadline." % (what, pause),
                                    item=item, reason="acme_rate_limited" if wait else "deadline") from None
            time.sleep(pause)
            delay = min(delay * 2, 8.0)
        raise LinkcertError("%s: too many retries" % what, item=item, reason="ca_unreachable")  # pragma: no cover

    def _post(self, url: str, obj: t.Any, deadline: float = 0.0) -> t.Any:
        """A JWS-signed POST (RFC 8555 6.2); the body is application/jose+json."""
        directory = self.directory(deadline)
        return self._net().post(url, obj, new_nonce_url=directory["newNonce"])

    # ---------------------------------------------------------- directory

    def directory(self, deadline: float = 0.0) -> t.Dict[str, t.Any]:
        """The directory document (RFC 8555 7.1.1), fetched once."""
        with self._lock:
            if self._directory is None:
                limit = deadline or time.monotonic() + self.timeout

                def fetch() -> t.Dict[str, t.Any]:
                    response = self._net().get(self.directory_url)
                    return dict(response.json())

                self._directory = self._call("fetching the ACME directory", fetch, limit)
            return self._directory

    # ------------------------------------------------------------ account

    def account(self, email: t.Optional[str], terms_agreed: bool, eab: t.Optional[t.Tuple[str, str]], deadline: float) -> str:
        """Register the account key (RFC 8555 7.3), or find its existing account; returns the account URL."""
        directory = self.directory(deadline)
        meta = directory.get("meta") or {}
        if meta.get("termsOfService") and not terms_agreed:
            raise LinkcertError("the CA requires agreeing to its terms of service (%s): set terms_agreed=true once you have read them"
                                % meta["termsOfService"], reason="terms_not_agreed")
        if meta.get("externalAccountRequired") and not eab:
            raise LinkcertError("the CA requires external account binding: give eab_kid and eab_hmac_key", reason="eab_required")
        binding = None
        if eab:
            binding = messages.ExternalAccountBinding.from_data(self.jwk.public_key(), eab[0], eab[1],
                                                                messages.Directory.from_json(directory))
        registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=bool(terms_agreed),
                                                          external_account_binding=binding)

        def register() -> str:
            response = self._post(directory["newAccount"], registration, deadline=deadline)
            return str(response.headers.get("Location"))

        try:
            uri = self._call("registering the ACME account", register, deadline)
        except acme_errors.ConflictError as conflict:
            uri = str(conflict.location)
        self.account_uri = uri
        return uri

    # -------------------------------------------------------------- order

    def new_order(self, names: t.Sequence[str], deadline: float, replaces: t.Optional[str] = None,
                  profile: t.Optional[str] = None) -> t.Tuple[str, t.Dict[str, t.Any]]:
        """Create an order (RFC 8555 7.4); returns its URL and body."""
        directory = self.directory(deadline)
        body: t.Dict[str, t.Any] = {"identifiers": [{"type": "dns", "value": name} for name in names]}
        if replaces:
            body["replaces"] = replaces
        if profile:
            body["profile"] = profile

        def create() -> t.Tuple[str, t.Dict[str, t.Any]]:
            response = self._post(directory["newOrder"], _RawJSON(body), deadline=deadline)
            return str(response.headers.get("Location")), dict(response.json())

        return self._call("ordering a certificate for %s" % ", ".join(names), create, deadline, names[0])

    def get(self, url: str, deadline: float, item: t.Optional[str] = None) -> t.Any:
        """POST-as-GET (RFC 8555 6.3)."""
        return self._call("fetching %s" % url, lambda: self._post(url, None, deadline=deadline), deadline, item)

    def answer(self, challenge_url: str, deadline: float, item: str) -> None:
        """Tell the CA the challenge is ready (RFC 8555 7.5.1)."""
        self._call("answering the HTTP-01 challenge", lambda: self._post(challenge_url, _RawJSON({}), deadline=deadline), deadline, item)

    def wait_valid(self, url: str, deadline: float, item: str, pending: t.Tuple[str, ...] = ("pending", "processing")) -> t.Dict[str, t.Any]:
        """Poll an authorization or order until it leaves ``pending``: short first intervals, growing, honouring Retry-After."""
        interval = 0.01
        while True:
            response = self.get(url, deadline, item)
            body = dict(response.json())
            if body.get("status") not in pending:
                return body
            wait = _retry_after_seconds(response)
            pause = max(interval, min(wait, 30.0)) if wait is not None else interval
            if time.monotonic() + pause > deadline:
                raise LinkcertError("%s: the CA is still validating or issuing at the deadline (status %s)" % (item, body.get("status")),
                                    item=item, reason="deadline")
            time.sleep(pause)
            interval = min(interval * 1.6, 2.0)

    def finalize(self, finalize_url: str, csr_pem: bytes, deadline: float, item: str) -> None:
        """Send the CSR (RFC 8555 7.4) as base64url DER, built here so any acme library version works."""
        from cryptography import x509  # imported here: only needed once per issuance
        from cryptography.hazmat.primitives import serialization

        der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
        request = _RawJSON({"csr": jose.b64.b64encode(der).decode("ascii")})
        self._call("finalizing the order", lambda: self._post(finalize_url, request, deadline=deadline), deadline, item)

    def download(self, certificate_url: str, deadline: float, item: str) -> bytes:
        response = self.get(certificate_url, deadline, item)
        return response.content

    def renewal_info(self, cert_id: str, deadline: float, item: str) -> t.Optional[t.Tuple[t.Dict[str, t.Any], t.Optional[str]]]:
        """GET the ARI resource (RFC 9773); None when the directory offers none."""
        url = self.directory(deadline).get("renewalInfo")
        if not url:
            return None

        def fetch() -> t.Tuple[t.Dict[str, t.Any], t.Optional[str]]:
            response = self._net().get(url.rstrip("/") + "/" + cert_id)
            return dict(response.json()), response.headers.get("Retry-After")

        return self._call("asking the CA for renewal information", fetch, deadline, item)
