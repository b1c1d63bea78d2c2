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

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_chain, _acme_errors
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
_MAX_RETRIES = 5


AcmeProblem = _acme_errors.AcmeProblem
problem_text = _acme_errors.problem_text


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


def _response_of(error: BaseException) -> t.Any:
    """The HTTP response a ClientError carries (the acme library passes it, or (it, the parse error)), or None."""
    if not isinstance(error, acme_errors.ClientError):
        return None
    first = error.args[0] if error.args else None
    if isinstance(first, tuple) and first:
        first = first[0]
    return first if hasattr(first, "status_code") else None


def _status_of(error: BaseException) -> t.Optional[int]:
    status = getattr(_response_of(error), "status_code", None)
    return status if isinstance(status, int) else None


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

    def _call(self, what: str, action: t.Callable[[], t.Any], deadline: float, item: t.Optional[str] = None,
              conflict_ok: bool = False) -> t.Any:
        """Run one protocol request; every failure becomes an AcmeFailure with its rule (``_acme_errors``), retried as the
        rule says: at once (badNonce), with backoff honouring Retry-After within ``deadline`` (429, 5xx, the network),
        or not in this run. ``conflict_ok`` lets a 409 through as the acme library raises it (an existing account)."""
        delay = 0.25
        for attempt in range(_MAX_RETRIES + 1):
            self.requests += 1
            try:
                return action()
            except messages.Error as error:
                failure, cause = _acme_errors.classify(error, what, _acme_errors.problem_code(error), problem_text(error), item), error
            except acme_errors.ConflictError as error:
                if conflict_ok:
                    raise
                code, detail = _acme_errors.problem_of_response(getattr(self._net(), "last_response", None))
                failure, cause = _acme_errors.classify(error, what, code or "conflict", detail or "409 Conflict", item), error
                failure.http_status = 409
            except requests.exceptions.SSLError as error:
                raise self._tls_failure(what, error, item) from error
            except (acme_errors.Error, jose.errors.Error, requests.exceptions.RequestException) as error:
                failure, cause = _acme_errors.classify(error, what, item=item, ca="the CA at %s" % self.directory_url), error
                if isinstance(error, acme_errors.ClientError) and (_status_of(error) or 0) >= 500:  # a 5xx without a problem document
                    failure = AcmeProblem("%s: the CA answered HTTP %s (%s)" % (what, _status_of(error), short_error(error)), "serverInternal",
                                          item)
            except (ValueError, KeyError, TypeError, AttributeError) as error:  # an answer of the wrong shape (a field missing, not JSON)
                failure, cause = _acme_errors.classify(error, what, item=item, ca="the CA at %s" % self.directory_url), error
            wait = None
            if failure.rule.retry == _acme_errors.BACKOFF:
                wait = _retry_after_seconds(_response_of(cause) or getattr(self._net(), "last_response", None))
            if failure.rule.retry not in (_acme_errors.NOW, _acme_errors.BACKOFF) or attempt == _MAX_RETRIES:
                failure.retry_at = time.time() + wait if wait is not None else None
                raise failure from cause
            pause = max(delay, min(wait, 60.0)) if wait is not None else delay
            if time.monotonic() + pause > deadline:
                if failure.reason in (_acme_errors.CA_UNREACHABLE,) and wait is None:
                    raise failure from cause
                late = _acme_errors.PROBLEMS["rateLimited"] if wait else _acme_errors.ACME_EXCEPTIONS["TimeoutError"]
                said = " It said: %s" % failure.detail if failure.detail else ""
                raise _acme_errors.AcmeFailure("%s: the CA asked to retry after %.0f s, past this certificate's deadline.%s" % (what, pause, said),
                                               late, failure.code, item, time.time() + wait if wait else None, failure.detail) from cause
            time.sleep(pause)
            delay = min(delay * 2, 8.0)
        raise LinkcertError("%s: too many retries" % what, item=item, reason=_acme_errors.CA_UNREACHABLE)  # pragma: no cover

    def _tls_failure(self, what: str, error: BaseException, item: t.Optional[str]) -> LinkcertError:
        text = short_error(error)
        if "not yet valid" in text or "has expired" in text:
            return _acme_errors.AcmeFailure("%s: the CA's TLS certificate is not valid at this host's time, %s (%s). Check this host's "
                                            "clock (timedatectl, NTP); verification is never switched off." % (
                                                what, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), text),
                                            _acme_errors.HOST_CLOCK_RULE, item=item)
        return _acme_errors.AcmeFailure("%s: the CA's TLS certificate is not trusted (%s). Give the CA's root in acme_ca_bundle; "
                                        "verification is never switched off." % (what, text), _acme_errors.exception_rule(error)
                                        or _acme_errors.REQUESTS_EXCEPTIONS["SSLError"], item=item)

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
            uri = self._call("registering the ACME account", register, deadline, conflict_ok=True)
        except acme_errors.ConflictError as conflict:  # the key has an account already: its URL
            uri = str(conflict.location)
        except _acme_errors.AcmeFailure as failure:
            if binding is None or failure.code not in _acme_errors.EAB_REFUSAL_CODES:
                raise
            raise _acme_errors.AcmeFailure("the CA refused the external account binding of key id %s: %s" % (eab[0], failure.detail or failure.msg),
                                           _acme_errors.EAB_RULE, failure.code, None, None, failure.detail) from failure
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
        return self.download_with_alternates(certificate_url, deadline, item)[0]

    def download_with_alternates(self, certificate_url: str, deadline: float, item: str) -> t.Tuple[bytes, t.List[str]]:
        """The certificate chain, and the URLs of the alternate chains the CA offers (RFC 8555 7.4.2)."""
        response = self.get(certificate_url, deadline, item)
        raw = getattr(getattr(response, "raw", None), "headers", None)
        values = raw.getlist("Link") if hasattr(raw, "getlist") else [response.headers.get("Link", "")]
        return response.content, _acme_chain.alternate_urls(values)

    def renewal_info(self, cert_id: str, deadline: float, item: str) -> t.Optional[t.Tuple[t.Dict[str, t.Any], t.Optional[str]]]:
        """GET the ARI resource (RFC 9773); None when the directory offers none."""
        url = self.directory(deadline).get("renewalInfo")
        if not url:
            return None

        def fetch() -> t.Tuple[t.Dict[str, t.Any], t.Optional[str]]:
            response = self._net().get(url.rstrip("/") + "/" + cert_id)
            return dict(response.json()), response.headers.get("Retry-After")

        return self._call("asking the CA for renewal information", fetch, deadline, item)
