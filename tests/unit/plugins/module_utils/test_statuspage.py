# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The status page: escaping (every value is customer-influenced), no external URL, counts, order, determinism."""

from __future__ import annotations

import html.parser
import json
import re
import typing as t

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _statuspage

NOW = "2026-12-01T02:00:00Z"


class Page(html.parser.HTMLParser):
    """The parsed page: every start tag with its attributes, the text outside script/style, and the scripts' contents."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: t.List[t.Tuple[str, t.Dict[str, t.Optional[str]]]] = []
        self.text: t.List[str] = []
        self.scripts: t.List[t.Tuple[t.Dict[str, t.Optional[str]], str]] = []
        self.markup: t.List[str] = []  # the tags as written, the style sheet and the program: everything but text and data
        self._in: t.Optional[str] = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: t.List[t.Tuple[str, t.Optional[str]]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.markup.append(self.get_starttag_text() or "")
        if tag in ("script", "style"):
            self._in = tag
            if tag == "script":
                self.scripts.append((dict(attrs), ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)
            if not attrs:
                self.markup.append(data)
        elif self._in == "style":
            self.markup.append(data)
        elif self._in is None:
            self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)

    def data(self) -> t.List[t.Dict[str, t.Any]]:
        [body] = [body for attrs, body in self.scripts if attrs.get("id") == "linkcert-data"]
        return json.loads(body)


def row(domain: str = "links.customer.example", **kwargs: t.Any) -> t.Dict[str, t.Any]:
    entry = {"node": "edge-a", "domain": domain, "ssl_status": "issued", "reason": "issued", "message": "Issued.",
             "remediation": None, "not_after": "2027-02-21T10:00:00Z", "renew_after": "2027-01-22T10:00:00Z", "alerts": []}
    entry.update(kwargs)
    return entry


ALLOWED_TAGS = {"html", "head", "meta", "link", "title", "style", "body", "header", "h1", "p", "ul", "li", "span", "strong",
                "main", "div", "label", "input", "select", "option", "table", "thead", "tbody", "tr", "th", "td", "button",
                "details", "summary", "code", "time", "wbr", "script"}
ALLOWED_ATTRS = {"lang", "charset", "http-equiv", "content", "name", "rel", "href", "class", "aria-label", "id", "role",
                 "hidden", "type", "placeholder", "autocomplete", "spellcheck", "value", "aria-live", "scope", "data-key",
                 "aria-sort", "data-i", "data-label", "datetime", "colspan"}

PAYLOADS = [
    "</script><script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "<!-- --><style>body{background:url(https://evil.example/x)}</style>",
    "&lt;b&gt;already escaped&amp;",
    "line\u2028separator\u2029paragraph</SCRIPT >",
    '<a href="https://evil.example/">click</a> <link rel=stylesheet href=//evil.example/x.css>',
]
FIELDS = ["domain", "node", "reason", "message", "remediation", "serial", "served_serial", "alerts", "not_after", "renew_after"]
# The pending watcher's record (on a domain not issued, where it is shown): its times are shown as times and its count as a
# number, so a value that is neither is left out, never shown.
WATCH_FIELDS = ["watch", "watch.since", "watch.attempts", "watch.next_check", "watch.stopped"]


def watch(**kwargs: t.Any) -> t.Dict[str, t.Any]:
    found = {"since": "2026-11-30T10:00:00Z", "attempts": 3, "last_check": "2026-12-01T01:50:00Z", "next_check": "2026-12-01T02:20:00Z",
             "stopped": None}
    found.update(kwargs)
    return found


def hostile_row(field: str, payload: str) -> t.Dict[str, t.Any]:
    entry = row(serial="0a", served_serial="0b")
    if field.startswith("watch"):
        entry.update(ssl_status="unknown", reason="dns_not_ready", watch=watch())
        if field == "watch":
            entry["watch"] = payload
        else:
            entry["watch"][field.split(".", 1)[1]] = payload
        return entry
    entry[field] = [payload] if field == "alerts" else payload
    return entry


@pytest.mark.parametrize("field", FIELDS + WATCH_FIELDS)
@pytest.mark.parametrize("payload", PAYLOADS, ids=["script", "attr-img", "svg", "style-url", "double-escape", "u2028", "links"])
def test_hostile_values_are_inert_text(field, payload):
    page_text = _statuspage.render([row("ok.example"), hostile_row(field, payload)], NOW, title=payload)
    page = Page(page_text)
    # Only the page's own markup: no tag or attribute the payload could have introduced, no event handler.
    assert {tag for tag, _attrs in page.tags} <= ALLOWED_TAGS
    assert {name for _tag, attrs in page.tags for name in attrs} <= ALLOWED_ATTRS
    assert len(page.scripts) == 2 and [attrs for attrs, _body in page.scripts] == [{"type": "application/json", "id": "linkcert-data"}, {}]
    assert page_text.count("<script") == 2 and page_text.count("</script>") == 2
    assert [tag for tag, _attrs in page.tags if tag == "style"] == ["style"]
    assert [attrs["href"] for tag, attrs in page.tags if tag == "link"] == ["data:,"]
    if field in WATCH_FIELDS:
        # Not a time, not a count: left out (the <title> and the <h1> only), the rest of the watch still shown.
        assert page.all_text.count(payload) == 2 and payload not in page_text.split('<tbody id="rows">')[1]
        if field == "watch.stopped":
            assert page_text.count('<strong class="stopped">stopped</strong>') == 1
        elif field not in ("watch", "watch.next_check"):
            assert page_text.count('<time datetime="2026-12-01T02:20:00Z">') == 1
    else:
        # The payload is shown as text, character for character.
        shown = "".join(line for line in payload.splitlines() if line.strip()) if field == "remediation" else payload  # one record a line
        assert shown in page.all_text
        assert page.all_text.count(payload) >= 2  # the <title> and the <h1>
    # The embedded data has no "<", ">", "&" or line separators, and still decodes to the value.
    [body] = [body for attrs, body in page.scripts if attrs.get("id") == "linkcert-data"]
    assert not set(body) & set("<>&\u2028\u2029")
    data = page.data()
    assert data[1]["text"] == " ".join(_statuspage._text(hostile_row(field, payload).get(k)) for k in ("domain", "node", "reason"))
    # The output is ASCII (other characters as references), so it cannot be mis-decoded.
    assert page_text.isascii()


@pytest.mark.parametrize("payload", PAYLOADS[:3])
def test_hostile_title_and_time(payload):
    page = Page(_statuspage.render([], payload, title=payload))
    titles = [tag for tag, _attrs in page.tags if tag in ("title", "h1")]
    assert titles == ["title", "h1"]
    assert page.all_text.count(payload) == 3  # <title>, <h1> and the (unparsable) generated-at time
    assert {tag for tag, _attrs in page.tags} <= ALLOWED_TAGS


def test_script_json_escapes_what_could_end_the_script():
    value = {"a": "</script><!--<script>", "b": "x\u2028y\u2029z", "c": "&amp;", "d": "caf\u00e9"}
    text = _statuspage.script_json(value)
    assert not re.search("[<>&\u2028\u2029]", text) and text.isascii()
    assert json.loads(text) == value
    assert _statuspage.script_json(value) == text


def test_attribute_escaping_uses_quotes():
    assert _statuspage.esc('"\'<>&') == "&quot;&#x27;&lt;&gt;&amp;"
    assert _statuspage.esc(None) == "" and _statuspage.esc("a\x00b\x1bc\td") == "a\ufffdb\ufffdc\td"


EXTERNAL = [
    re.compile(r"""\b(?:src|href|action|formaction|poster|background|data|srcset)\s*=\s*["']?\s*(?:https?:|//)""", re.I),
    re.compile(r"@import", re.I),
    re.compile(r"url\s*\(", re.I),
    re.compile(r"https?://", re.I),
]


@pytest.mark.parametrize("rows", [
    [],
    [row()],
    [row(remediation="x.example. CNAME edge.example.\nexample. CAA 0 issue \"letsencrypt.org\"", ssl_status="unknown")],
    [hostile_row(field, PAYLOADS[-1]) for field in FIELDS + WATCH_FIELDS] + [hostile_row("message", PAYLOADS[3])],
], ids=["empty", "one", "remediation", "hostile-urls"])
def test_no_external_url(rows):
    page_text = _statuspage.render(rows, NOW)
    page = Page(page_text)
    hostile = any(PAYLOADS[-1] in str(r.values()) for r in rows)
    markup = "\n".join(page.markup)
    assert "<style>" in markup and "JSON.parse" in markup
    for pattern in EXTERNAL:
        # The tags, the style sheet and the program never point anywhere ...
        assert not pattern.search(markup), pattern.pattern
        # ... and a page without URLs in its data has none at all; with them, they are only text (and JSON data).
        if not hostile:
            assert not pattern.search(page_text), pattern.pattern
    if hostile:
        assert PAYLOADS[-1] in page.all_text
    csp = [attrs["content"] for tag, attrs in page.tags if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp == [_statuspage.CSP]
    assert csp[0].startswith("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:")
    viewport = [attrs["content"] for tag, attrs in page.tags if tag == "meta" and attrs.get("name") == "viewport"]
    assert viewport == ["width=device-width, initial-scale=1"]
    assert [attrs for tag, attrs in page.tags if tag in ("img", "iframe", "object", "embed", "form", "a", "base")] == []


def counts(page_text: str) -> t.Dict[str, int]:
    found = dict(re.findall(r'<li class="count-(\w+)">.*?<strong>(\d+)</strong>', page_text))
    return {key: int(value) for key, value in found.items()}


COUNT_CASES = [
    ("empty", [], {"issued": 0, "pending": 0, "unknown": 0, "alerts": 0}, "0 rows: 0 domains on 0 nodes."),
    ("mixed", [row("a.x"), row("b.x", ssl_status="pending"), row("c.x", ssl_status="unknown"), row("a.x", node="edge-b")],
     {"issued": 2, "pending": 1, "unknown": 1, "alerts": 0}, "4 rows: 3 domains on 2 nodes."),
    ("invalid-status-is-unknown", [row(ssl_status="revoked"), row(ssl_status=None), row(ssl_status="ISSUED")],
     {"issued": 1, "pending": 0, "unknown": 2, "alerts": 0}, "3 rows: 1 domain on 1 node."),
    ("alerts", [row("a.x", alerts=["expires soon", "served mismatch"]), row("b.x", alerts="one alert as a string"),
                row("c.x", alerts=[]), row("d.x", alerts=None), row("e.x", alerts=["", None])],
     {"issued": 5, "pending": 0, "unknown": 0, "alerts": 3}, "5 rows: 5 domains on 1 node."),
]


@pytest.mark.parametrize("case", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_counts(case):
    _id, rows, expected, meta = case
    page_text = _statuspage.render(rows, NOW)
    assert counts(page_text) == expected
    assert meta in Page(page_text).all_text
    assert ">%d of %d domains<" % (len(rows), len(rows)) in page_text
    data = Page(page_text).data()
    assert sum(1 for d in data if d["alerts"]) == sum(1 for r in rows if [a for a in (r.get("alerts") or []) if a] or isinstance(r.get("alerts"), str))
    assert page_text.count('class="row-') == len(rows)
    highlighted = [attrs["data-i"] for tag, attrs in Page(page_text).tags if tag == "tr" and "has-alerts" in (attrs.get("class") or "").split()]
    assert highlighted == [str(d["i"]) for d in data if d["alerts"]]
    if not rows:
        assert "No domains." in page_text


def test_rows_in_input_order_with_labels_and_badges():
    rows = [row("zz.example", node="edge-b", ssl_status="unknown", reason="dns_not_ready", remediation="zz.example. CNAME edge.example."),
            row("aa.example", ssl_status="pending", reason="awaiting_issuance", not_after=None, renew_after=None),
            row("mm.example", node="edge-c", alerts=["expires in 2 day(s)"])]
    page_text = _statuspage.render(rows, NOW)
    page = Page(page_text)
    assert [attrs["data-i"] for tag, attrs in page.tags if tag == "tr" and "data-i" in attrs] == ["0", "1", "2"]
    body = page_text[page_text.index('<tbody id="rows">'):]
    positions = [body.index(name.replace(".", ".<wbr>")) for name in ("zz.example", "aa.example", "mm.example")]
    assert positions == sorted(positions)
    badges = re.findall(r'<span class="badge badge-(\w+)">(SSL \w+)</span>', body)
    assert badges == [("unknown", "SSL Unknown"), ("pending", "SSL Pending"), ("issued", "SSL Issued")]
    assert [d["status"] for d in page.data()] == ["unknown", "pending", "issued"]
    assert [d["k"]["status"] for d in page.data()] == [0, 1, 2]
    assert 'class="row-issued has-alerts"' in body and body.count("has-alerts") == 1
    # Every cell carries its label for the phone layout.
    assert body.count('data-label="Domain"') == 3 and body.count('data-label="Record to fix"') == 3
    # The message is there on demand, in a <details>.
    assert body.count("<details><summary>Details</summary>") == 3


def test_remediation_lines_and_serials():
    page_text = _statuspage.render([row(remediation="a.example. CNAME edge.example.\n\nexample. CAA 0 issue \"letsencrypt.org\"\n",
                                        serial="0A1B", served_serial="0c0d")], NOW)
    assert page_text.count('<span class="rec">') == 2
    assert "Serial on disk: <code>0A1B</code>" in page_text
    assert "Serial served: <code>0c0d</code> (differs from the one on disk)" in page_text
    same = _statuspage.render([row(serial="0A1B", served_serial="0a1b")], NOW)
    assert "differs" not in same


TIME_CASES = [
    ("z", "2027-02-21T10:00:00Z", "2027-02-21T10:00:00Z", "2027-02-21", "10:00 UTC", "in 82 days"),
    ("offset", "2027-01-01T01:30:00+01:00", "2027-01-01T00:30:00Z", "2027-01-01", "00:30 UTC", "in 30 days"),
    ("naive-is-utc", "2026-12-01T05:00:00", "2026-12-01T05:00:00Z", "2026-12-01", "05:00 UTC", "in 3 hours"),
    ("past", "2026-11-28T02:00:00Z", "2026-11-28T02:00:00Z", "2026-11-28", "02:00 UTC", "expired 3 days ago"),
    ("soon", "2026-12-01T02:30:00Z", "2026-12-01T02:30:00Z", "2026-12-01", "02:30 UTC", "in less than an hour"),
]


@pytest.mark.parametrize("case", TIME_CASES, ids=[c[0] for c in TIME_CASES])
def test_times_shown_in_utc_relative_and_sorted_as_times(case):
    _id, value, iso, day, clock, relative = case
    page_text = _statuspage.render([row(not_after=value, renew_after=None)], NOW)
    assert ('<time datetime="%s"><span class="nw">%s</span> <span class="nw">%s</span></time> <span class="rel">(%s)</span>'
            % (iso, day, clock, relative)) in page_text
    key = Page(page_text).data()[0]["k"]["not_after"]
    assert key == int(_statuspage.parse_time(iso).timestamp())
    assert Page(page_text).data()[0]["k"]["renew_after"] is None


@pytest.mark.parametrize("value", ["next tuesday", "9999-12-31T23:59:00-01:00", "0001-01-01T00:00:00+01:00"])
def test_unparsable_time_is_shown_as_text_and_sorts_last(value):
    page_text = _statuspage.render([row(not_after=value, renew_after="")], NOW)
    assert value in page_text and "<time" not in page_text.split('<tbody id="rows">')[1]
    assert Page(page_text).data()[0]["k"]["not_after"] is None
    # Without a parsable generated_at the times are shown without the relative part.
    assert '<span class="rel">' not in _statuspage.render([row()], "now-ish")


def test_deterministic_and_independent_of_key_order():
    rows = [row("a.example", alerts=["x"]), row("b.example", ssl_status="pending", remediation="b. CNAME e.")]
    first = _statuspage.render(rows, NOW, title="t")
    assert _statuspage.render(rows, NOW, title="t") == first
    reordered = [dict(reversed(list(r.items()))) for r in rows]
    assert _statuspage.render(reordered, NOW, title="t") == first
    assert _statuspage.render(rows, "2026-12-02T02:00:00Z", title="t") != first
    assert rows == [row("a.example", alerts=["x"]), row("b.example", ssl_status="pending", remediation="b. CNAME e.")]  # not mutated


def test_filter_plugin_wraps_render():
    from ansible.errors import AnsibleFilterError

    from ansible_collections.mailops.linkcert.plugins.filter import status_page

    filters = status_page.FilterModule().filters()
    assert filters["status_page"]([row()], NOW) == _statuspage.render([row()], NOW)
    assert filters["status_page"]([row()], NOW, title="EU") == _statuspage.render([row()], NOW, title="EU")
    for bad in ("text", [{"node": "edge-a"}], ["a.example"]):
        with pytest.raises(AnsibleFilterError, match="status_page expects a list of status rows"):
            filters["status_page"](bad, NOW)
    with pytest.raises(AnsibleFilterError, match="generated_at"):
        filters["status_page"]([row()], None)


def next_check_cell(page_text: str) -> t.List[str]:
    """The Next check cells' contents, in row order ("" for an empty one)."""
    cells = re.findall(r'<td class="c-next_check( empty)?" data-label="Next check"><div class="v">(.*?)</div></td>', page_text)
    return ["" if empty else cell for empty, cell in cells]


def at(iso: str, relative: str) -> str:
    day, clock = iso[:10], iso[11:16]
    return ('<time datetime="%s"><span class="nw">%s</span> <span class="nw">%s UTC</span></time> <span class="rel">(%s)</span>'
            % (iso, day, clock, relative))


STOPPED = watch(next_check=None, stopped="2026-11-30T10:00:00Z", attempts=151)
SINCE = '<strong class="stopped">stopped</strong> <span class="since">since <time datetime="2026-11-30T10:00:00Z"><span class="nw">2026-11-30' \
    '</span> <span class="nw">10:00 UTC</span></time></span>'
# case, row → the Next check cell ("" when empty), its sort key (the next check's epoch)
NEXT_CHECKS = [
    ("watching", row(ssl_status="unknown", watch=watch()),
     at("2026-12-01T02:20:00Z", "in less than an hour") + '<span class="checks">3 checks so far</span>', 1796091600),
    ("one-check", row(ssl_status="unknown", watch=watch(attempts=1, next_check="2026-12-01T02:01:00Z")),
     at("2026-12-01T02:01:00Z", "in less than an hour") + '<span class="checks">1 check so far</span>', 1796090460),
    ("every-6-hours-offset", row(ssl_status="unknown", watch=watch(attempts=40, next_check="2026-12-02T10:00:00+02:00")),
     at("2026-12-02T08:00:00Z", "in 1 day") + '<span class="checks">40 checks so far</span>', 1796198400),
    ("overdue", row(ssl_status="pending", reason="acme_connection", watch=watch(next_check="2026-11-30T20:00:00Z")),
     at("2026-11-30T20:00:00Z", "due 6 hours ago") + '<span class="checks">3 checks so far</span>', 1796068800),
    ("invalid-status-is-unknown", row(ssl_status="revoked", watch=watch(attempts=0)),
     at("2026-12-01T02:20:00Z", "in less than an hour") + '<span class="checks">0 checks so far</span>', 1796091600),
    ("stopped", row(ssl_status="unknown", reason="watch_stopped", watch=STOPPED), SINCE + '<span class="checks">after 151 checks</span>', None),
    ("stopped-wins-over-a-next-check", row(ssl_status="unknown", watch=dict(STOPPED, next_check="2026-12-01T03:00:00Z", attempts=1)),
     SINCE + '<span class="checks">after 1 check</span>', None),
    ("stopped-unreadable", row(ssl_status="unknown", watch=watch(next_check=None, stopped="a while ago", attempts=True)),
     '<strong class="stopped">stopped</strong>', None),
    # A count that is not a non-negative int is left out, and so is a time that is not one.
    ("attempts-bool", row(ssl_status="unknown", watch=watch(attempts=False)), at("2026-12-01T02:20:00Z", "in less than an hour"), 1796091600),
    ("attempts-negative", row(ssl_status="unknown", watch=watch(attempts=-1)), at("2026-12-01T02:20:00Z", "in less than an hour"), 1796091600),
    ("attempts-text", row(ssl_status="unknown", watch=watch(attempts="3")), at("2026-12-01T02:20:00Z", "in less than an hour"), 1796091600),
    ("attempts-float", row(ssl_status="unknown", watch=watch(attempts=3.0)), at("2026-12-01T02:20:00Z", "in less than an hour"), 1796091600),
    ("next-check-unreadable", row(ssl_status="unknown", watch=watch(next_check="tomorrow")), "", None),
    ("next-check-a-number", row(ssl_status="unknown", watch=watch(next_check=1796091600)), "", None),
    ("next-check-none-in-utc", row(ssl_status="unknown", watch=watch(next_check="9999-12-31T23:59:00-01:00")), "", None),
    ("stopped-none-in-utc", row(ssl_status="unknown", watch=watch(stopped="0001-01-01T00:00:00+01:00", attempts=2)),
     '<strong class="stopped">stopped</strong><span class="checks">after 2 checks</span>', None),
    ("next-check-null", row(ssl_status="unknown", watch=watch(next_check=None)), "", None),
    ("issued", row(watch=watch()), "", None),
    ("no-watch", row(ssl_status="unknown"), "", None),
    ("watch-null", row(ssl_status="unknown", watch=None), "", None),
    ("watch-empty", row(ssl_status="unknown", watch={}), "", None),
    ("watch-a-list", row(ssl_status="unknown", watch=[watch()]), "", None),
]


@pytest.mark.parametrize("case", NEXT_CHECKS, ids=[c[0] for c in NEXT_CHECKS])
def test_next_check_of_the_pending_watcher(case):
    _id, entry, cell, key = case
    page_text = _statuspage.render([entry], NOW)
    assert next_check_cell(page_text) == [cell]
    assert Page(page_text).data()[0]["k"]["next_check"] == key
    if key is not None:
        assert key == int(_statuspage.parse_time(re.search(r'datetime="([^"]+)"', cell).group(1)).timestamp())


def test_next_check_column_sorts_and_is_labelled():
    rows = [row("a.example", ssl_status="unknown", watch=watch(next_check="2026-12-01T04:00:00Z")),
            row("b.example", ssl_status="unknown", reason="watch_stopped", watch=STOPPED),
            row("c.example"),
            row("d.example", ssl_status="pending", watch=watch(next_check="2026-12-01T03:00:00Z"))]
    page_text = _statuspage.render(rows, NOW)
    page = Page(page_text)
    headers = [attrs["data-key"] for tag, attrs in page.tags if tag == "th"]
    assert headers == [key for key, _header in _statuspage.COLUMNS]
    assert headers.index("next_check") == headers.index("remediation") + 1
    assert '<th scope="col" class="c-next_check" data-key="next_check" aria-sort="none"><button type="button">Next check</button></th>' in page_text
    assert [d["k"]["next_check"] for d in page.data()] == [1796097600, None, None, 1796094000]
    assert all(set(d["k"]) == set(headers) for d in page.data()), "every column has its sort key"
    assert '<option value="next_check:asc">Next check (soonest first)</option>' in page_text
    assert page_text.count('data-label="Next check"') == 4 and page_text.count('class="c-next_check empty"') == 1
    # Filtered by reason as before: a stopped watch is found as watch_stopped.
    assert [d["text"] for d in page.data()][1] == "b.example edge-a watch_stopped"
    assert _statuspage.render(rows, NOW) == page_text
