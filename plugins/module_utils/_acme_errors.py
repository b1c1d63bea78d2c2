# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""What every answer of an ACME CA, and every failure on the way to it, means for a certificate.

One rule per RFC 8555 problem type (section 6.7, with RFC 9773's ``alreadyReplaced`` and the profiles draft's
``invalidProfile``), and one per exception class the ``acme`` library, ``josepy`` and ``requests`` define: the
status reason, whether the customer must fix it (a never-issued domain is then SSL Unknown), what to do, and the
retry rule. :func:`classify` turns any such exception into an :class:`AcmeFailure` (a ``LinkcertError``), so no
answer of a real CA ends as a bare "Module failed".

Retry rules:

* ``now``: retried at once within the same request (a fresh nonce, RFC 8555 6.5);
* ``backoff``: retried within the certificate's deadline with growing pauses, honouring ``Retry-After``;
* ``amended``: the same request would fail again; it is made once more, changed as the remediation says (an order
  without ``replaces``), by the caller that knows how;
* ``later``: this run gives up on the certificate, a later run (the pending watcher, the timer) tries again;
* ``fix``: nothing is retried on its own until someone changes something (the remediation says what).

An exception class unknown to the tables (a future library release) is classified by its nearest known base class,
and ``tests/unit/plugins/module_utils/test_acme_errors.py`` walks the three libraries' exception modules, so such a
class fails the test, not the module.
"""

from __future__ import annotations

import json
import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError, short_error

NOW, BACKOFF, AMENDED, LATER, FIX = "now", "backoff", "amended", "later", "fix"
RETRY_RULES = (NOW, BACKOFF, AMENDED, LATER, FIX)

#: Reasons of failures that are the CA's or the network's, named once.
CA_UNREACHABLE = "ca_unreachable"
CA_PROTOCOL_ERROR = "ca_protocol_error"
CA_UNTRUSTED = "ca_untrusted"
HOST_CLOCK = "host_clock"
DEADLINE = "deadline"
ACME_CONFIG = "acme_config"


#: The CA refused the external account binding while the account was registered.
EAB_REFUSED = "eab_refused"
#: The problem types a CA answers a refused binding with (Pebble: unauthorized; Boulder and others: malformed, or
#: externalAccountRequired for a binding it cannot use).
EAB_REFUSAL_CODES = frozenset(("unauthorized", "malformed", "externalAccountRequired", "badSignatureAlgorithm"))


class Rule(t.NamedTuple):
    reason: str
    retry: str
    customer: bool
    remediation: str


def snake(code: str) -> str:
    """``rejectedIdentifier`` -> ``rejected_identifier``, ``badCSR`` -> ``bad_csr``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", code).lower()


def problem_code(error: t.Any) -> str:
    """The problem type of a ``messages.Error``, also one the acme library does not know (its ``code`` is then None)."""
    kind = str(getattr(error, "typ", "") or "")
    for namespace in ("urn:ietf:params:acme:error:", "urn:acme:error:"):
        if kind.startswith(namespace) and kind[len(namespace):]:
            return kind[len(namespace):]
    return str(getattr(error, "code", None) or "serverInternal")


def _problem(code: str, retry: str, remediation: str, customer: bool = False) -> Rule:
    return Rule("acme_" + snake(code), retry, customer, remediation)


_CUSTOMER_DNS = ("Publish the record the status names (a CNAME to the edge, or a CAA record that lets the CA issue); the "
                 "pending watcher checks again on its own.")

#: RFC 8555 6.7 (and RFC 9773, the profiles draft, and the legacy codes the acme library still knows).
PROBLEMS: t.Dict[str, Rule] = {
    "accountDoesNotExist": _problem("accountDoesNotExist", LATER, "The CA no longer knows the account on record; the next run registers "
                                    "the account key again."),
    "alreadyReplaced": _problem("alreadyReplaced", AMENDED, "The certificate named in replaces was replaced already; the order is "
                                "placed again without replaces."),
    "alreadyRevoked": _problem("alreadyRevoked", FIX, "The certificate is already revoked; nothing to do."),
    "badCSR": _problem("badCSR", FIX, "The CA refused the CSR (key type or names); check key_type and the names, then verify again."),
    "badNonce": _problem("badNonce", NOW, "Retried with a fresh nonce."),
    "badPublicKey": _problem("badPublicKey", FIX, "The CA refused the key; choose another key_type."),
    "badRevocationReason": _problem("badRevocationReason", FIX, "Revoke with a reason the CA accepts."),
    "badSignatureAlgorithm": _problem("badSignatureAlgorithm", FIX, "The CA refused the account key's JWS algorithm; use an EC P-256 or "
                                      "RSA account key."),
    "caa": _problem("caa", FIX, _CUSTOMER_DNS, customer=True),
    "compound": _problem("compound", LATER, "Several problems, listed in the message; a later run tries again."),
    "connection": _problem("connection", FIX, "The CA could not reach the edge on port 80 for the name: its DNS must lead to the edge "
                           "and nothing in between (a proxying CDN, a firewall) may block it.", customer=True),
    "dns": _problem("dns", FIX, "The CA could not resolve the name; the customer's DNS must answer for it.", customer=True),
    "dnssec": _problem("dnssec", FIX, "The name's DNSSEC does not validate at the CA; the customer must fix the zone's signatures.",
                       customer=True),
    "externalAccountRequired": _problem("externalAccountRequired", FIX, "The CA requires external account binding: give eab_kid and "
                                        "eab_hmac_key (linkcert_acme_eab_*)."),
    "incorrectResponse": _problem("incorrectResponse", FIX, "The CA read another answer than the token's on port 80: another server "
                                  "answers for the name (an old provider, a CDN).", customer=True),
    "invalidContact": _problem("invalidContact", FIX, "The CA refused the account's contact; set a valid linkcert_acme_email."),
    "invalidEmail": _problem("invalidEmail", FIX, "The CA refused the account's e-mail address; set a valid linkcert_acme_email."),
    "invalidProfile": _problem("invalidProfile", FIX, "The CA does not offer this profile; choose one its directory lists."),
    "malformed": _problem("malformed", LATER, "The CA could not parse the request; a later run tries again (report it if it stays)."),
    "orderNotReady": _problem("orderNotReady", LATER, "The order was not ready to finalize; a later run places a new one."),
    "rateLimited": _problem("rateLimited", BACKOFF, "The CA's rate limit: retried after its Retry-After, in this run if the deadline "
                            "allows, else by a later run."),
    "rejectedIdentifier": _problem("rejectedIdentifier", FIX, "The CA will not issue for this name (its policy or a blocklist); nothing "
                                   "is retried.", customer=True),
    "serverInternal": _problem("serverInternal", BACKOFF, "The CA had an internal error; retried with backoff, then by a later run."),
    "tls": _problem("tls", FIX, "The CA's TLS connection to the edge failed for the name.", customer=True),
    "unauthorized": _problem("unauthorized", FIX, "The CA did not find the expected token on port 80 for the name; its DNS must lead "
                             "to the edge.", customer=True),
    "unknownHost": _problem("unknownHost", FIX, "The CA does not know the name's host; its DNS must answer for it.", customer=True),
    "unsupportedContact": _problem("unsupportedContact", FIX, "The CA supports no such contact; use a mailto: address."),
    "unsupportedIdentifier": _problem("unsupportedIdentifier", FIX, "The CA issues for no such name (an IP, a wildcard over HTTP-01)."),
    "userActionRequired": _problem("userActionRequired", FIX, "The CA requires an action of the account holder (new terms of service, "
                                   "see the message's link)."),
    # A 409 whose body is not a problem document (the acme library raises ConflictError before reading it).
    "conflict": _problem("conflict", LATER, "The CA answered 409 Conflict; an order with replaces is placed again without it, "
                         "anything else is tried again by a later run."),
}
UNKNOWN_PROBLEM = _problem("unknownProblem", LATER, "The CA answered with a problem type linkcert does not know; a later run tries again.")

_CA_UNREACHABLE = Rule(CA_UNREACHABLE, BACKOFF, False,
                       "Check the edge's network path to the CA (firewall, proxy, DNS); a later run tries again.")
_PROTOCOL = Rule(CA_PROTOCOL_ERROR, LATER, False,
                 "The CA's answer could not be understood; a later run tries again (report it if it stays).")
HOST_CLOCK_RULE = Rule(HOST_CLOCK, FIX, False, "Check this host's clock (timedatectl, NTP); TLS verification is never switched off.")
_BAD_URL = Rule(ACME_CONFIG, FIX, False, "Check acme_directory (linkcert_acme_directory): it must be the CA's https directory URL.")

#: A binding the CA refused at registration: the pair is wrong, or used up (a CA may bind each pair once).
EAB_RULE = Rule(EAB_REFUSED, FIX, False, "Check linkcert_acme_eab_kid and linkcert_acme_eab_hmac_key against the EAB credentials "
                "your CA account shows (copied whole); a CA that binds each pair once needs a new pair for a new account key.")

#: Every exception class of acme.errors, by name: its rule (a ``messages.Error`` goes through PROBLEMS instead).
ACME_EXCEPTIONS: t.Dict[str, Rule] = {
    "Error": _PROTOCOL,
    "ClientError": _PROTOCOL,
    "DependencyError": Rule("acme_library", FIX, False, "The acme library on this host lacks a dependency; install the distribution's "
                                                        "python3-acme package (certificate_install_dependencies)."),
    "SchemaValidationError": _PROTOCOL,
    "UnexpectedUpdate": _PROTOCOL,
    "NonceError": PROBLEMS["badNonce"],
    "BadNonce": PROBLEMS["badNonce"],
    "MissingNonce": PROBLEMS["badNonce"],
    "PollError": Rule(DEADLINE, LATER, False, "The CA did not finish in time; a later run tries again."),
    "TimeoutError": Rule(DEADLINE, LATER, False, "The CA did not finish in time; a later run tries again."),
    "ValidationError": PROBLEMS["unauthorized"],
    "IssuanceError": Rule("acme_order_invalid", LATER, False, "The CA could not issue the order; a later run places a new one."),
    "ConflictError": PROBLEMS["conflict"],
    "WildcardUnsupportedError": PROBLEMS["unsupportedIdentifier"],
    "ARIError": Rule("ari_unavailable", LATER, False, "The CA's renewal information could not be read; renewal falls back to the "
                                                      "certificate's lifetime."),
}
#: Every exception class of josepy.errors, by name.
JOSE_EXCEPTIONS: t.Dict[str, Rule] = {
    "Error": _PROTOCOL,
    "DeserializationError": _PROTOCOL,
    "SerializationError": _PROTOCOL,
    "UnrecognizedTypeError": _PROTOCOL,
}
#: Every exception class of requests.exceptions, by name (its warnings excepted).
REQUESTS_EXCEPTIONS: t.Dict[str, Rule] = {
    "RequestException": _CA_UNREACHABLE,
    "ConnectionError": _CA_UNREACHABLE,
    "ConnectTimeout": _CA_UNREACHABLE,
    "ReadTimeout": _CA_UNREACHABLE,
    "Timeout": _CA_UNREACHABLE,
    "ProxyError": Rule(CA_UNREACHABLE, BACKOFF, False, "The HTTPS proxy (https_proxy in the environment) refused or failed; check it."),
    "ChunkedEncodingError": _CA_UNREACHABLE,
    "ContentDecodingError": _CA_UNREACHABLE,
    "RetryError": _CA_UNREACHABLE,
    "SSLError": Rule(CA_UNTRUSTED, FIX, False, "Give the CA's root in acme_ca_bundle (linkcert_acme_ca_bundle); verification is never "
                                               "switched off."),
    "HTTPError": _PROTOCOL,
    "TooManyRedirects": _BAD_URL,
    "InvalidURL": _BAD_URL,
    "InvalidSchema": _BAD_URL,
    "MissingSchema": _BAD_URL,
    "URLRequired": _BAD_URL,
    "InvalidProxyURL": Rule(ACME_CONFIG, FIX, False, "Fix the proxy URL in the environment (https_proxy)."),
    "InvalidHeader": _PROTOCOL,
    "InvalidJSONError": _PROTOCOL,
    "JSONDecodeError": _PROTOCOL,
    "StreamConsumedError": _PROTOCOL,
    "UnrewindableBodyError": _PROTOCOL,
}
_BY_MODULE = (("acme.errors", ACME_EXCEPTIONS), ("josepy.errors", JOSE_EXCEPTIONS), ("requests.exceptions", REQUESTS_EXCEPTIONS))


class AcmeFailure(LinkcertError):
    """A failure on the way to, or from, the CA: its reason, remediation and retry rule (``code``: the problem type)."""

    def __init__(self, message: str, rule: Rule, code: t.Optional[str] = None, item: t.Optional[str] = None,
                 retry_at: t.Optional[float] = None, detail: str = "") -> None:
        super().__init__(message, item=item, reason=rule.reason)
        self.rule = rule
        self.code = code
        self.retry_at = retry_at
        self.detail = detail  # the CA's own words (a problem's detail), which may name the limit a 429 is for
        self.remediation = rule.remediation
        self.http_status: t.Optional[int] = None  # the CA's HTTP status, where it tells more than the problem type (409)

    @property
    def customer_must_fix(self) -> bool:
        return self.rule.customer


class AcmeProblem(AcmeFailure):
    """An RFC 7807 problem from the CA (``reason`` is ``acme_`` + the snake-cased type), with its rule."""

    def __init__(self, message: str, code: str, item: t.Optional[str] = None, retry_at: t.Optional[float] = None,
                 detail: str = "") -> None:
        super().__init__(message, problem_rule(code), code, item, retry_at, detail)


def problem_rule(code: t.Optional[str]) -> Rule:
    return PROBLEMS.get(str(code or ""), UNKNOWN_PROBLEM)


def exception_rule(error: BaseException) -> t.Optional[Rule]:
    """The rule of ``error``'s class, or of its nearest base class the tables know; None for a foreign exception."""
    for cls in type(error).__mro__:
        for module, table in _BY_MODULE:
            if cls.__module__ == module and cls.__name__ in table:
                return table[cls.__name__]
    return None


def problem_text(error: t.Any) -> str:
    """A readable one-liner of a problem document, with its sub-problems."""
    parts = [str(getattr(error, "detail", "") or getattr(error, "title", "") or error)]
    for sub in getattr(error, "subproblems", None) or []:
        identifier = getattr(getattr(sub, "identifier", None), "value", "")
        parts.append("%s: %s" % (identifier, getattr(sub, "detail", sub)))
    return "; ".join(p for p in parts if p)


def problem_of_response(response: t.Any) -> t.Tuple[t.Optional[str], str]:
    """(type code, detail) of a problem document in an HTTP response (what the acme library did not read for a 409)."""
    try:
        body = json.loads(response.content or b"{}") if response is not None else {}
    except (ValueError, AttributeError, TypeError):
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    kind = str(body.get("type") or "")
    code = kind.rsplit(":", 1)[-1] if kind.startswith(("urn:ietf:params:acme:error:", "urn:acme:error:")) else None
    return code, str(body.get("detail") or body.get("title") or "")


def classify(error: BaseException, what: str, code: t.Optional[str] = None, detail: str = "", item: t.Optional[str] = None,
             retry_at: t.Optional[float] = None, ca: str = "the CA") -> AcmeFailure:
    """The failure ``error`` stands for, while ``what`` was being done (a problem type ``code`` when there is one);
    ``ca`` names the CA in the message (its directory URL)."""
    if code is not None:
        said = detail or short_error(error)
        return AcmeProblem("%s: the CA answered %s: %s" % (what, code, said), code, item, retry_at, said)
    rule = exception_rule(error) or _PROTOCOL
    return AcmeFailure("%s: %s (%s)." % (what, _describe(rule, ca), short_error(error)), rule, None, item, retry_at)


def _describe(rule: Rule, ca: str) -> str:
    return {CA_UNREACHABLE: "%s cannot be reached" % ca, CA_UNTRUSTED: "%s's TLS certificate is not trusted" % ca,
            DEADLINE: "%s did not finish in time" % ca, ACME_CONFIG: "%s's address is not usable" % ca}.get(
                rule.reason, "unexpected answer from %s" % ca)
