# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every exception the acme library, josepy and requests define, and every RFC 8555 problem type, ends as a status.

The tests walk the libraries' exception modules: a class a future release adds, and the tables do not name, fails
here (where someone maps it) rather than in a run (where it would be classified by its base class at best)."""

from __future__ import annotations

import inspect
import json
import time
import typing as t

import josepy.errors
import pytest
import requests.exceptions
from acme import errors as acme_errors
from acme import messages

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_client, _acme_errors
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_client import AcmeClient
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_keys import generate_key
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError

MODULES = ((acme_errors, _acme_errors.ACME_EXCEPTIONS), (josepy.errors, _acme_errors.JOSE_EXCEPTIONS),
           (requests.exceptions, _acme_errors.REQUESTS_EXCEPTIONS))


def exception_classes(module: t.Any) -> t.List[type]:
    """The exception classes a module defines (its warnings are not raised as errors)."""
    return [cls for _name, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, Exception) and not issubclass(cls, Warning) and cls.__module__ == module.__name__]


def instance(cls: type) -> BaseException:
    """An instance whatever its constructor wants (several of these take structured arguments)."""
    error = cls.__new__(cls)
    Exception.__init__(error, "scripted %s" % cls.__name__)
    return error


@pytest.mark.parametrize("module, table", MODULES, ids=[m.__name__ for m, _t in MODULES])
def test_every_exception_class_of_the_library_is_in_the_table(module: t.Any, table: t.Dict[str, _acme_errors.Rule]) -> None:
    found = {cls.__name__ for cls in exception_classes(module)}
    missing = sorted(found - set(table))
    assert not missing, "%s defines exception classes the table does not map: %s" % (module.__name__, ", ".join(missing))


@pytest.mark.parametrize("cls", [cls for module, _table in MODULES for cls in exception_classes(module)],
                         ids=lambda cls: "%s.%s" % (cls.__module__, cls.__name__))
def test_each_exception_becomes_a_failure_with_reason_rule_and_remediation(cls: type) -> None:
    failure = _acme_errors.classify(instance(cls), "ordering a certificate for links.customer.test", item="links.customer.test",
                                    ca="the CA at https://ca.test/dir")
    assert isinstance(failure, LinkcertError) and failure.item == "links.customer.test"
    assert failure.reason and failure.rule.retry in _acme_errors.RETRY_RULES and failure.remediation.endswith(".")
    assert failure.msg.startswith("ordering a certificate for links.customer.test: ")


def test_a_subclass_the_tables_do_not_know_takes_its_base_class_rule() -> None:
    class FutureNonceError(acme_errors.BadNonce):  # a release that adds a class (defined elsewhere than acme.errors)
        pass

    class Unrelated(RuntimeError):
        pass

    assert _acme_errors.exception_rule(instance(FutureNonceError)) == _acme_errors.ACME_EXCEPTIONS["BadNonce"]
    assert _acme_errors.exception_rule(instance(Unrelated)) is None
    assert _acme_errors.classify(instance(Unrelated), "x").reason == _acme_errors.CA_PROTOCOL_ERROR


# RFC 8555 6.7, RFC 9773 and the acme library's legacy codes: (reason, retried within the run, customer must fix).
PROBLEM_TABLE = [
    ("accountDoesNotExist", "acme_account_does_not_exist", False, False),
    ("alreadyReplaced", "acme_already_replaced", False, False),  # amended by the caller: an order without replaces
    ("alreadyRevoked", "acme_already_revoked", False, False),
    ("badCSR", "acme_bad_csr", False, False),
    ("badNonce", "acme_bad_nonce", True, False),
    ("badPublicKey", "acme_bad_public_key", False, False),
    ("badRevocationReason", "acme_bad_revocation_reason", False, False),
    ("badSignatureAlgorithm", "acme_bad_signature_algorithm", False, False),
    ("caa", "acme_caa", False, True),
    ("compound", "acme_compound", False, False),
    ("connection", "acme_connection", False, True),
    ("dns", "acme_dns", False, True),
    ("dnssec", "acme_dnssec", False, True),
    ("externalAccountRequired", "acme_external_account_required", False, False),
    ("incorrectResponse", "acme_incorrect_response", False, True),
    ("invalidContact", "acme_invalid_contact", False, False),
    ("invalidEmail", "acme_invalid_email", False, False),
    ("invalidProfile", "acme_invalid_profile", False, False),
    ("malformed", "acme_malformed", False, False),
    ("orderNotReady", "acme_order_not_ready", False, False),
    ("rateLimited", "acme_rate_limited", True, False),
    ("rejectedIdentifier", "acme_rejected_identifier", False, True),
    ("serverInternal", "acme_server_internal", True, False),
    ("tls", "acme_tls", False, True),
    ("unauthorized", "acme_unauthorized", False, True),
    ("unknownHost", "acme_unknown_host", False, True),
    ("unsupportedContact", "acme_unsupported_contact", False, False),
    ("unsupportedIdentifier", "acme_unsupported_identifier", False, False),
    ("userActionRequired", "acme_user_action_required", False, False),
    ("somethingNew", "acme_unknown_problem", False, False),
]


def test_every_problem_type_the_acme_library_knows_is_in_the_table() -> None:
    assert not sorted(set(messages.ERROR_CODES) - set(_acme_errors.PROBLEMS))
    assert {row[0] for row in PROBLEM_TABLE} - {"somethingNew"} == set(_acme_errors.PROBLEMS) - {"conflict"}


class FakeResponse:
    def __init__(self, status: int = 200, headers: t.Optional[t.Dict[str, str]] = None, body: t.Any = None) -> None:
        self.status_code, self.headers = status, headers or {}
        self.content = json.dumps(body).encode() if body is not None else b""


class FakeNet:
    last_response: t.Any = None


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> AcmeClient:
    monkeypatch.setattr(_acme_client.time, "sleep", lambda seconds: None)
    found = AcmeClient("https://ca.test/dir", None, generate_key("ec256"), timeout=30)
    net = FakeNet()
    monkeypatch.setattr(found, "_net", lambda: net)
    found.fake_net = net  # type: ignore[attr-defined]
    return found


def failing(client: AcmeClient, error: BaseException, response: t.Any = None) -> t.Tuple[t.Callable[[], t.Any], t.List[int]]:
    calls: t.List[int] = []

    def action() -> t.Any:
        calls.append(1)
        client.fake_net.last_response = response  # type: ignore[attr-defined]
        raise error

    return action, calls


@pytest.mark.parametrize("code, reason, retried, customer", PROBLEM_TABLE, ids=[row[0] for row in PROBLEM_TABLE])
def test_each_problem_type_through_the_client(client: AcmeClient, code: str, reason: str, retried: bool, customer: bool) -> None:
    action, calls = failing(client, messages.Error(typ="urn:ietf:params:acme:error:" + code, detail="scripted"))
    with pytest.raises(_acme_errors.AcmeFailure) as caught:
        client._call("answering", action, time.monotonic() + 600, "links.customer.test")
    failure = caught.value
    assert (failure.reason, failure.code, failure.customer_must_fix) == (reason, code, customer)
    assert len(calls) == (6 if retried else 1), "retried as its rule says"
    assert "scripted" in failure.msg and failure.remediation


def test_a_409_is_read_for_its_problem_document(client: AcmeClient) -> None:
    """The acme library raises ConflictError for any 409 before it reads the body (Pebble 2.6 and Boulder answer
    alreadyReplaced that way): the client reads the body itself."""
    replaced = FakeResponse(409, body={"type": "urn:ietf:params:acme:error:alreadyReplaced", "detail": "cert already replaced"})
    action, calls = failing(client, acme_errors.ConflictError("https://ca.test/order/1"), replaced)
    with pytest.raises(_acme_errors.AcmeProblem) as caught:
        client._call("ordering a certificate for links.customer.test", action, time.monotonic() + 600)
    assert (caught.value.code, caught.value.reason) == ("alreadyReplaced", "acme_already_replaced")
    assert "cert already replaced" in caught.value.msg and len(calls) == 1, "the same order would be refused again: not repeated"
    assert caught.value.rule.retry == _acme_errors.AMENDED and caught.value.http_status == 409
    pebble = FakeResponse(409, body={"type": "urn:ietf:params:acme:error:malformed", "detail": "which already has a replacement order"})
    action, calls = failing(client, acme_errors.ConflictError("https://ca.test/order/1"), pebble)
    with pytest.raises(_acme_errors.AcmeProblem) as caught:
        client._call("ordering", action, time.monotonic() + 600)
    assert (caught.value.code, caught.value.http_status, len(calls)) == ("malformed", 409, 1), "Pebble 2.6's 409: its status is kept"
    bare = FakeResponse(409, body=None)
    action, calls = failing(client, acme_errors.ConflictError("https://ca.test/order/1"), bare)
    with pytest.raises(_acme_errors.AcmeProblem) as caught:
        client._call("x", action, time.monotonic() + 600)
    assert (caught.value.code, caught.value.reason, len(calls)) == ("conflict", "acme_conflict", 1)


def test_registration_keeps_the_conflict_that_names_an_existing_account(client: AcmeClient) -> None:
    action, _calls = failing(client, acme_errors.ConflictError("https://ca.test/acct/7"))
    with pytest.raises(acme_errors.ConflictError):
        client._call("registering", action, time.monotonic() + 600, conflict_ok=True)


@pytest.mark.parametrize("error, reason, calls", [
    (requests.exceptions.ConnectTimeout("timed out"), "ca_unreachable", 6),
    (requests.exceptions.ProxyError("proxy said no"), "ca_unreachable", 6),
    (requests.exceptions.ChunkedEncodingError("cut"), "ca_unreachable", 6),
    (requests.exceptions.TooManyRedirects("loop"), "acme_config", 1),
    (requests.exceptions.InvalidURL("no"), "acme_config", 1),
    (requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0), "ca_protocol_error", 1),
    (josepy.errors.DeserializationError("bad field"), "ca_protocol_error", 1),
    (acme_errors.BadNonce("nonce", "bad"), "acme_bad_nonce", 6),
    (acme_errors.MissingNonce(FakeResponse()), "acme_bad_nonce", 6),
    (acme_errors.ClientError(FakeResponse(502)), "acme_server_internal", 6),
    (acme_errors.ClientError(FakeResponse(404)), "ca_protocol_error", 1),
])
def test_library_failures_through_the_client(client: AcmeClient, error: BaseException, reason: str, calls: int) -> None:
    action, made = failing(client, error)
    with pytest.raises(LinkcertError) as caught:
        client._call("fetching the ACME directory", action, time.monotonic() + 600)
    assert caught.value.reason == reason and len(made) == calls
    assert caught.value.__cause__ is error, "the cause is kept (-vvv shows it)"


@pytest.mark.parametrize("error", [KeyError("newNonce"), ValueError("Expecting value: line 1 column 1"), TypeError("'NoneType' object"),
                                   AttributeError("'str' object has no attribute 'get'")])
def test_an_answer_of_the_wrong_shape_is_a_protocol_error(client: AcmeClient, error: BaseException) -> None:
    """Code that reads the CA's answer (a field missing, a body that is not JSON) fails as the CA's protocol error, once."""
    action, calls = failing(client, error)
    with pytest.raises(_acme_errors.AcmeFailure) as caught:
        client._call("fetching the ACME directory", action, time.monotonic() + 600)
    assert (caught.value.reason, caught.value.rule.retry, len(calls)) == ("ca_protocol_error", _acme_errors.LATER, 1)
    assert "fetching the ACME directory: unexpected answer from the CA at" in caught.value.msg
