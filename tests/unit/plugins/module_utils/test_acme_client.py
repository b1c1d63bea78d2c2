# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Retry and error wording of the ACME client wrapper, with scripted failures (no network)."""

from __future__ import annotations

import time

import pytest
import requests
from acme import errors as acme_errors
from acme import messages

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_client
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_client import AcmeClient, AcmeProblem, problem_text
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_errors import snake
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_keys import generate_key
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_run import _challenge_problem, split_chain
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError


class FakeResponse:
    def __init__(self, status=200, headers=None):
        self.status_code = status
        self.headers = headers or {}


class FakeNet:
    last_response = None


@pytest.fixture
def client(monkeypatch):
    sleeps = []
    monkeypatch.setattr(_acme_client.time, "sleep", sleeps.append)
    instance = AcmeClient("https://ca.example/dir", None, generate_key("ec256"), timeout=30)
    net = FakeNet()
    monkeypatch.setattr(instance, "_net", lambda: net)
    instance.sleeps = sleeps
    instance.fake_net = net
    return instance


def scripted(client, outcomes):
    """An action that raises/returns the given outcomes in turn, setting the last response's headers."""
    calls = []

    def action():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        headers, value = outcome
        client.fake_net.last_response = FakeResponse(headers=headers)
        if isinstance(value, BaseException):
            raise value
        return value

    return action, calls


def problem(code, detail="d"):
    return messages.Error.with_code(code, detail=detail)


def test_bad_nonce_is_retried(client):
    action, calls = scripted(client, [({}, problem("badNonce")), ({}, problem("badNonce")), ({}, "ok")])
    assert client._call("x", action, time.monotonic() + 30) == "ok"
    assert len(calls) == 3 and client.requests == 3
    assert client.sleeps == [0.25, 0.5], "short growing backoff"


def test_rate_limit_honours_retry_after(client):
    action, calls = scripted(client, [({"Retry-After": "3"}, problem("rateLimited")), ({}, "ok")])
    assert client._call("x", action, time.monotonic() + 30) == "ok"
    assert client.sleeps == [3.0]


def test_retry_after_past_deadline_fails_at_once(client):
    detail = 'too many failed authorizations (5) for "a.example" in the last 1h0m0s'
    action, calls = scripted(client, [({"Retry-After": "3600"}, problem("rateLimited", detail))])
    with pytest.raises(LinkcertError) as err:
        client._call("ordering", action, time.monotonic() + 10)
    assert err.value.reason == "acme_rate_limited" and client.sleeps == [] and len(calls) == 1
    # The CA's words reach the status and the ledger: they name what the 429 refuses (here one name, not the account).
    assert err.value.detail == detail and detail in err.value.msg
    assert 3590 < err.value.retry_at - time.time() <= 3600


def test_server_error_retried_then_reported(client):
    action, calls = scripted(client, [({}, problem("serverInternal"))] * 6)
    with pytest.raises(AcmeProblem) as err:
        client._call("finalizing", action, time.monotonic() + 600)
    assert len(calls) == 6 and err.value.reason == "acme_server_internal"
    assert client.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0]


def test_http_503_without_problem_document(client):
    response = FakeResponse(503, {"Retry-After": "2"})
    action, calls = scripted(client, [({}, acme_errors.ClientError(response)), ({}, "ok")])
    assert client._call("x", action, time.monotonic() + 30) == "ok"
    assert client.sleeps == [2.0]


@pytest.mark.parametrize("code,customer", [("unauthorized", True), ("rejectedIdentifier", True), ("caa", True), ("malformed", False)])
def test_final_problems_are_not_retried(client, code, customer):
    action, calls = scripted(client, [({}, problem(code, "no way"))])
    with pytest.raises(AcmeProblem) as err:
        client._call("answering", action, time.monotonic() + 30)
    assert len(calls) == 1 and err.value.reason == "acme_" + snake(code) and err.value.customer_must_fix is customer
    assert "no way" in err.value.msg


def test_unreachable_and_untrusted(client):
    action, calls = scripted(client, [({}, requests.exceptions.ConnectionError("refused"))] * 6)
    with pytest.raises(LinkcertError) as err:
        client._call("x", action, time.monotonic() + 600)
    assert err.value.reason == "ca_unreachable" and "ca.example" in err.value.msg and len(calls) == 6
    action, calls = scripted(client, [({}, requests.exceptions.SSLError("self-signed"))])
    with pytest.raises(LinkcertError) as err:
        client._call("x", action, time.monotonic() + 600)
    assert err.value.reason == "ca_untrusted" and len(calls) == 1 and "acme_ca_bundle" in err.value.msg


def test_problem_text_and_snake():
    error = messages.Error.from_json({"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "policy forbids",
                                      "subproblems": [{"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "blocked",
                                                       "identifier": {"type": "dns", "value": "a.example"}}]})
    assert problem_text(error) == "policy forbids; a.example: blocked"
    assert snake("rejectedIdentifier") == "rejected_identifier" and snake("badNonce") == "bad_nonce"


def test_challenge_problem_and_chain_split():
    error = {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}
    body = {"status": "invalid", "challenges": [{"type": "http-01", "error": error}]}
    err = _challenge_problem(body, "a.example")
    assert err.reason == "acme_connection" and err.customer_must_fix and "refused" in err.msg
    pem = b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n"
    leaf, chain = split_chain(pem)
    assert leaf.count(b"BEGIN") == 1 and b"AAA" in leaf and b"BBB" in chain and b"AAA" not in chain
    with pytest.raises(LinkcertError):
        split_chain(b"")
