# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The edge's traffic contract, cell by cell: which names get a TLS server, which are redirected, what nginx is given."""

from __future__ import annotations

import datetime
import json
import os
import stat
import typing as t
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _sites
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore, iso
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

NOW = datetime.datetime(2026, 12, 4, 12, 0, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def record(domain: str = "links.customer.com", *, days_left: float = 60, lifetime: float = 90, installed: bool = True,
           **fields: t.Any) -> t.Dict[str, t.Any]:
    """A state file as acme_http01_cert writes it for an issued certificate; ``fields`` override."""
    not_after = NOW + datetime.timedelta(days=days_left)
    base = {"domain": domain, "names": [domain], "ssl_status": "issued", "reason": "not_due", "serial": "0a1b",
            "not_before": iso(not_after - datetime.timedelta(days=lifetime)), "not_after": iso(not_after)}
    if installed:
        base.update(fullchain="/etc/linkcert/live/%s/fullchain.pem" % domain, privkey="/etc/linkcert/live/%s/privkey.pem" % domain)
    base.update(fields)
    return base


def on_disk(*records: t.Mapping[str, t.Any]) -> t.Callable[[str], bool]:
    """An ``exists`` that knows the files of these records."""
    files = {r[key] for r in records for key in ("fullchain", "privkey") if r.get(key)}
    return files.__contains__


# Each row: a state of the name, its record, whether port 443 serves it its own certificate, whether port 80 redirects.
CONTRACT = [
    ("issued", record(), True, True),
    ("issued, renewal failed (old certificate still valid)", record(reason="ca_unreachable", action="failed"), True, True),
    ("issued, renewal held: a CAA lookup failed", record(reason="caa_dns_error", held=True), True, False),
    ("dns drift: the CNAME moved away", record(ssl_status="pending", reason="dns_drift", held=True), True, False),
    ("caa drift, from an older record without the held flag", record(ssl_status="pending", reason="caa_drift"), True, False),
    ("expired", record(days_left=-1, ssl_status="pending", reason="acme_server_internal"), False, False),
    ("expires this very second", record(days_left=0), False, False),
    ("not yet valid: notBefore hours in the host's future", record(days_left=90.2, ssl_status="pending", reason="not_yet_valid"), False, False),
    ("notBefore a minute ahead (within the clock tolerance)", record(days_left=90 + 1 / 1440.0), True, True),
    ("pending: never issued", {"domain": "links.customer.com", "ssl_status": "pending", "reason": "awaiting_issuance"}, False, False),
    ("unknown: DNS not ready", {"domain": "links.customer.com", "ssl_status": "unknown", "reason": "dns_not_ready",
                                "remediation": "links.customer.com. CNAME edge.esp.example."}, False, False),
]


@pytest.mark.parametrize("state, found, served, redirected", CONTRACT, ids=[row[0] for row in CONTRACT])
def test_the_contract_cell_by_cell(state: str, found: t.Dict[str, t.Any], served: bool, redirected: bool) -> None:
    rendered = _sites.render([found], _sites.SiteOptions(), NOW, on_disk(found))
    assert (rendered.served, rendered.redirected) == ((["links.customer.com"] if served else []),
                                                      (["links.customer.com"] if redirected else [])), state
    conf, names = rendered.conf.decode(), rendered.names_map.decode()
    assert ("server_name links.customer.com;" in conf) == served
    assert ("\nlinks.customer.com 1;\n" in names) == redirected
    # Whatever the name's state, port 443 has a default server that refuses every name it does not serve.
    assert "listen 443 ssl http2 default_server;\n    listen [::]:443 ssl http2 default_server;\n    ssl_reject_handshake on;" in conf


def test_a_removed_certificate_is_not_served() -> None:
    found = record()
    assert _sites.render([found], _sites.SiteOptions(), NOW, on_disk(found)).served == ["links.customer.com"]
    only_the_key = {found["privkey"]}.__contains__
    assert _sites.render([found], _sites.SiteOptions(), NOW, only_the_key).served == []
    assert _sites.render([found], _sites.SiteOptions(), NOW, lambda path: False).redirected == []


def test_redirect_off_serves_https_and_proxies_every_plain_http_request() -> None:
    found = record()
    rendered = _sites.render([found], _sites.SiteOptions(http_redirect=False), NOW, on_disk(found))
    assert rendered.served == ["links.customer.com"] and rendered.redirected == []
    assert " 1;" not in rendered.names_map.decode() and "linkcert_http_redirect is off" in rendered.names_map.decode()


def test_a_tls_server_names_every_name_of_its_certificate_and_proxies_to_the_upstream() -> None:
    found = record(names=["links.customer.com", "click.customer.com"])
    options = _sites.SiteOptions(tracking_upstream="http://127.0.0.1:8080", listen_ipv6=False, https_port=8443)
    rendered = _sites.render([found], options, NOW, on_disk(found))
    conf = rendered.conf.decode()
    assert "server_name links.customer.com click.customer.com;" in conf
    assert "ssl_certificate /etc/linkcert/live/links.customer.com/fullchain.pem;" in conf
    assert "ssl_certificate_key /etc/linkcert/live/links.customer.com/privkey.pem;" in conf
    assert "proxy_pass http://127.0.0.1:8080;" in conf and "proxy_set_header Host $host;" in conf
    assert "proxy_set_header X-Forwarded-Proto https;" in conf
    assert "listen 8443 ssl http2;" in conf and "[::]" not in conf
    assert rendered.names_map.decode().splitlines()[-2:] == ["links.customer.com 1;", "click.customer.com 1;"]
    # Mozilla's intermediate profile (sslyze checks it on the test host): its protocols and curves, no server cipher order,
    # in the customer's server and in the default server (where OpenSSL takes the curves from, before SNI).
    default, customer = conf.split("server {")[1:]
    assert "ssl_reject_handshake on;" in default
    for line in ("ssl_protocols TLSv1.2 TLSv1.3;", "ssl_ecdh_curve X25519:prime256v1:secp384r1;", "ssl_prefer_server_ciphers off;"):
        assert (default.count(line), customer.count(line)) == (1, 1), line
    assert "ssl_stapling" not in conf, "Let's Encrypt ended OCSP in 2025"


def test_without_an_upstream_the_edge_answers_itself() -> None:
    found = record()
    conf = _sites.render([found], _sites.SiteOptions(), NOW, on_disk(found)).conf.decode()
    assert "proxy_pass" not in conf and 'return 200 "linkcert edge: $host\\n";' in conf


def test_http2_directive_for_newer_nginx() -> None:
    found = record()
    conf = _sites.render([found], _sites.SiteOptions(http2_directive=True), NOW, on_disk(found)).conf.decode()
    assert "listen 443 ssl default_server;" in conf and "http2 on;" in conf and "ssl http2" not in conf


@pytest.mark.parametrize("said, directive", [
    ("nginx version: nginx/1.22.1", False),
    ("nginx version: nginx/1.25.0", False),
    ("nginx version: nginx/1.25.1", True),
    ("nginx version: nginx/1.26.3", True),
    ("nginx version: nginx/2.0.0 (custom)", True),
    ("", False),
    ("not nginx", False),
])
def test_http2_syntax_from_nginx_version(said: str, directive: bool) -> None:
    assert _sites.http2_directive_for(said) is directive


def test_sites_are_sorted_and_a_name_claimed_twice_goes_to_one_domain() -> None:
    first = record("a.customer.com", names=["a.customer.com", "shared.customer.com"])
    second = record("b.customer.com", names=["b.customer.com", "shared.customer.com"])
    rendered = _sites.render([second, first], _sites.SiteOptions(), NOW, on_disk(first, second))
    assert rendered.served == ["a.customer.com", "b.customer.com"]
    conf = rendered.conf.decode()
    assert conf.count("shared.customer.com") == 1
    assert "server_name b.customer.com;" in conf


@pytest.mark.parametrize("field, value", [
    ("fullchain", "/etc/linkcert/live/x/full chain.pem"),
    ("privkey", "/etc/linkcert/live/x/key.pem;\n    include /etc/passwd"),
    ("privkey", "relative/privkey.pem"),
    ("fullchain", "/etc/linkcert/live/$ssl_server_name/fullchain.pem"),
])
def test_a_record_naming_a_path_nginx_cannot_take_is_an_error(field: str, value: str) -> None:
    found = record(**{field: value})
    with pytest.raises(LinkcertError) as caught:
        _sites.render([found], _sites.SiteOptions(), NOW, lambda path: True)
    assert caught.value.reason == "invalid_record" and caught.value.item == "links.customer.com"


def test_a_record_naming_a_bad_host_name_is_refused() -> None:
    found = record(names=["links.customer.com", "evil.com; return 200 x"])
    with pytest.raises(InputError) as caught:
        _sites.render([found], _sites.SiteOptions(), NOW, on_disk(found))
    assert "names item" in caught.value.msg


@pytest.mark.parametrize("upstream", [
    "127.0.0.1:8080", "ftp://tracker.example", "http://tracker.example; return 200", "http://tracker.example/a b",
    "http://tracker.example/$uri", "http://", "http://tracker.example:99999999", 'http://x"y', "http://x/{y}",
])
def test_a_bad_upstream_is_refused_naming_the_option(upstream: str) -> None:
    with pytest.raises(InputError) as caught:
        _sites.options_from({"tracking_upstream": upstream})
    assert caught.value.item == "tracking_upstream" and repr(upstream) in caught.value.msg


@pytest.mark.parametrize("upstream", ["", "http://127.0.0.1:8080", "https://tracker.esp.example/click", "http://[::1]:8080/t/"])
def test_good_upstreams_pass(upstream: str) -> None:
    assert _sites.options_from({"tracking_upstream": upstream}).tracking_upstream == upstream


@pytest.mark.parametrize("raw, item", [
    ({"conf": "relative.conf"}, "conf"),
    ({"conf": "/etc/nginx/conf.d/../x.conf"}, "conf"),
    ({"names_map": "/etc/nginx/linkcert/with space.map"}, "names_map"),
    ({"conf": "/etc/x.conf", "names_map": "/etc/x.conf"}, "names_map"),
    ({"https_port": 0}, "https_port"),
    ({"https_port": "443a"}, "https_port"),
])
def test_bad_options_are_refused_naming_them(raw: t.Dict[str, t.Any], item: str) -> None:
    with pytest.raises(InputError) as caught:
        _sites.options_from(raw)
    assert caught.value.item == item


# ------------------------------------------------------------------ writing the files

class Runs:
    """A stand-in for nginx -t: answers with the given exit status, remembering what it saw."""

    def __init__(self, rc: int = 0) -> None:
        self.rc, self.seen = rc, []

    def __call__(self, argv: t.List[str]) -> t.Tuple[int, str, str]:
        self.seen.append(argv)
        return self.rc, "", "" if self.rc == 0 else "nginx: [emerg] unexpected end of file in linkcert-sites.conf:9"


def setup_edge(tmp_path: Path, *records: t.Dict[str, t.Any]) -> t.Tuple[str, _sites.SiteOptions]:
    state_root, live = tmp_path / "state", tmp_path / "live"
    store = StateStore(state_root)
    for found in records:
        domain = found["domain"]
        if found.get("fullchain"):
            (live / domain).mkdir(parents=True)
            for name in ("fullchain", "privkey"):
                path = live / domain / ("%s.pem" % name)
                path.write_text("pem\n")
                found[name] = str(path)
        store.save(domain, found)
    (tmp_path / "conf.d").mkdir()
    options = _sites.SiteOptions(conf=str(tmp_path / "conf.d" / "linkcert-sites.conf"), names_map=str(tmp_path / "maps" / "names.map"))
    return str(state_root), options


def test_apply_writes_both_files_once_and_then_changes_nothing(tmp_path: Path) -> None:
    state_root, options = setup_edge(tmp_path, record(), record("pending.customer.com", installed=False, ssl_status="pending"))
    nginx = Runs()
    first = _sites.apply(state_root, options, ["nginx", "-t"], nginx, now=NOW, save_options=True)
    assert first.changed and first.served == ["links.customer.com"] and first.redirected == ["links.customer.com"]
    assert nginx.seen == [["nginx", "-t"]]
    assert "server_name links.customer.com;" in Path(options.conf).read_text()
    assert Path(options.names_map).read_text().endswith("links.customer.com 1;\n")
    assert stat.S_IMODE(os.stat(options.conf).st_mode) == 0o644
    saved = Path(state_root, _sites.OPTIONS_FILE)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and _sites.load_options(state_root) == options
    again = _sites.apply(state_root, options, ["nginx", "-t"], nginx, now=NOW, save_options=True)
    assert not again.changed and nginx.seen == [["nginx", "-t"]], "nothing written, nothing validated"


def test_an_expiry_takes_the_name_out_on_the_next_render(tmp_path: Path) -> None:
    state_root, options = setup_edge(tmp_path, record(days_left=1))
    assert _sites.apply(state_root, options, None, None, now=NOW).redirected == ["links.customer.com"]
    later = _sites.apply(state_root, options, None, None, now=NOW + 2 * DAY)
    assert later.changed and later.served == [] and later.redirected == []
    assert "server_name" not in Path(options.conf).read_text() and " 1;" not in Path(options.names_map).read_text()


def test_nginx_refusing_the_files_puts_the_previous_ones_back(tmp_path: Path) -> None:
    state_root, options = setup_edge(tmp_path, record())
    _sites.apply(state_root, options, None, None, now=NOW)
    before = (Path(options.conf).read_bytes(), Path(options.names_map).read_bytes())
    StateStore(state_root).save("new.customer.com", dict(record("new.customer.com"), fullchain=str(tmp_path / "live" / "links.customer.com" / "fullchain.pem"),
                                                         privkey=str(tmp_path / "live" / "links.customer.com" / "privkey.pem")))
    with pytest.raises(LinkcertError) as caught:
        _sites.apply(state_root, options, ["nginx", "-t"], Runs(rc=1), now=NOW)
    assert caught.value.reason == "validate_failed" and "unexpected end of file" in caught.value.msg
    assert (Path(options.conf).read_bytes(), Path(options.names_map).read_bytes()) == before
    assert sorted(os.listdir(tmp_path / "conf.d")) == ["linkcert-sites.conf"], "no temporary file left"


def test_check_mode_writes_nothing_and_takes_no_lock(tmp_path: Path) -> None:
    state_root, options = setup_edge(tmp_path, record())
    predicted = _sites.apply(state_root, options, ["nginx", "-t"], Runs(), check_mode=True, now=NOW, save_options=True)
    assert predicted.changed and predicted.served == ["links.customer.com"]
    assert not os.path.exists(options.conf) and not os.path.exists(options.names_map)
    assert not Path(state_root, _sites.OPTIONS_FILE).exists() and not Path(state_root, ".locks").exists()


def test_options_file_missing_or_broken(tmp_path: Path) -> None:
    assert _sites.load_options(str(tmp_path)) is None
    (tmp_path / _sites.OPTIONS_FILE).write_text(json.dumps({"tracking_upstream": "http://x; y"}))
    with pytest.raises(InputError):
        _sites.load_options(str(tmp_path))
    (tmp_path / _sites.OPTIONS_FILE).write_text("{not json")
    with pytest.raises(LinkcertError) as caught:
        _sites.load_options(str(tmp_path))
    assert caught.value.reason == "read_failed"
