# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The status page: one self-contained HTML file for support staff.

One row per domain and edge node with its label, reason, the record to fix, when the pending watcher
checks a domain not issued yet again (or that it stopped checking it), expiry, next renewal and
alerts; sortable, filterable, readable on a phone (rows become cards under 640px) and printable.
Everything is inline (CSS, JS, the data) and a Content-Security-Policy forbids loading anything
else, so the page works offline and can be mailed or attached to a ticket.

Every value comes from customer DNS or from the state files, so every value is escaped: text and
attributes with ``html.escape(quote=True)``, the JSON the script reads with ``<``, ``>``, ``&``,
U+2028 and U+2029 as ``\\uXXXX`` escapes (a ``</script>`` in the data cannot end the script element).
The output is ASCII (other characters as character references) and the same input gives the same page.
"""

from __future__ import annotations

import datetime
import html
import json
import re
import typing as t

ISSUED = "issued"
PENDING = "pending"
UNKNOWN = "unknown"
LABELS = {ISSUED: "SSL Issued", PENDING: "SSL Pending", UNKNOWN: "SSL Unknown"}
# Sort order of the status column: what needs attention first.
RANK = {UNKNOWN: 0, PENDING: 1, ISSUED: 2}

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

# (key, header): the columns, in order; every one sorts (the key names its sort key in the embedded data).
COLUMNS = (
    ("status", "Status"),
    ("domain", "Domain"),
    ("node", "Node"),
    ("reason", "Reason"),
    ("remediation", "Record to fix"),
    ("next_check", "Next check"),
    ("not_after", "Expires"),
    ("renew_after", "Next renewal"),
    ("alerts", "Alerts"),
)

NONE = '<span class="none">-</span>'  # an empty cell
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_JSON_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _text(value: t.Any) -> str:
    """A value as text: None is empty, control characters (other than tab and newlines) become U+FFFD."""
    if value is None:
        return ""
    return _CONTROL.sub("\ufffd", str(value))


def esc(value: t.Any) -> str:
    """Escaped for HTML text and for a double- or single-quoted attribute value."""
    return html.escape(_text(value), quote=True)


def _breakable(escaped: str) -> str:
    """Escaped text with a line break opportunity after every dot and underscore, so names wrap at their labels."""
    return escaped.replace(".", ".<wbr>").replace("_", "_<wbr>")


def script_json(value: t.Any) -> str:
    """JSON safe inside a <script> element: no ``<``, ``>``, ``&``, U+2028 or U+2029 left as such."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_UNSAFE[m.group(0)], text)


def parse_time(value: t.Any) -> t.Optional[datetime.datetime]:
    """An ISO 8601 time (``Z`` or an offset; none means UTC) as an aware datetime in UTC, None if it is not one (or is
    none in UTC: year 1 or 9999 with an offset)."""
    if isinstance(value, datetime.datetime):
        when = value
    else:
        text = _text(value).strip()
        if not text:
            return None
        try:
            when = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
        except ValueError:
            return None
    try:
        return (when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    except OverflowError:
        return None


def _epoch(when: t.Optional[datetime.datetime]) -> t.Optional[int]:
    return None if when is None else int((when - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds())


def _relative(when: datetime.datetime, now: t.Optional[datetime.datetime], past: str) -> str:
    """``in 12 days`` / ``3 days ago`` (``past`` words it, e.g. ``expired {} ago``) relative to the page's time."""
    if now is None:
        return ""
    seconds = (when - now).total_seconds()
    span = abs(seconds)
    if span >= 86400:
        amount = "%d day%s" % (span // 86400, "" if span // 86400 == 1 else "s")
    elif span >= 3600:
        amount = "%d hour%s" % (span // 3600, "" if span // 3600 == 1 else "s")
    else:
        amount = "less than an hour"
    return ("in %s" % amount) if seconds >= 0 else past.format(amount)


def _status(row: t.Mapping[str, t.Any]) -> str:
    status = _text(row.get("ssl_status")).lower()
    return status if status in LABELS else UNKNOWN


def _alerts(row: t.Mapping[str, t.Any]) -> t.List[str]:
    alerts = row.get("alerts")
    if alerts is None or alerts == "":
        return []
    if isinstance(alerts, (str, bytes)) or not isinstance(alerts, (list, tuple)):
        alerts = [alerts]
    return [_text(a) for a in alerts if _text(a)]


def _time_html(utc: datetime.datetime) -> str:
    """A time (in UTC) as a <time> element: the day and the clock, each kept on one line."""
    shown = '<span class="nw">%s</span> <span class="nw">%s</span>' % (utc.strftime("%Y-%m-%d"), utc.strftime("%H:%M UTC"))
    return '<time datetime="%s">%s</time>' % (esc(utc.strftime("%Y-%m-%dT%H:%M:%SZ")), shown)


def _time_cell(value: t.Any, now: t.Optional[datetime.datetime], past: str) -> t.Tuple[str, t.Optional[int]]:
    """The cell's HTML for a time and its sort key (seconds since the epoch, None when there is no valid time)."""
    when = parse_time(value)
    if when is None:
        raw = _text(value)
        return (esc(raw) if raw else NONE), None
    utc = when.astimezone(datetime.timezone.utc)
    relative = _relative(utc, now, past)
    cell = _time_html(utc)
    if relative:
        cell += ' <span class="rel">(%s)</span>' % esc(relative)
    return cell, _epoch(utc)


def _checks(watch: t.Mapping[str, t.Any]) -> t.Optional[int]:
    """The watch's number of checks so far: a non-negative int (not a bool), else None."""
    attempts = watch.get("attempts")
    return attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0 else None


def _next_check_cell(row: t.Mapping[str, t.Any], status: str, now: t.Optional[datetime.datetime]) -> t.Tuple[str, t.Optional[int]]:
    """The pending watcher's cell of a domain not issued yet and its sort key (the next check, seconds since the epoch).

    ``watch`` is ``{since, attempts, last_check, next_check, stopped}`` from the state file: the next check (relative to
    the page's time) and the checks so far, or ``stopped`` (since when, after how many checks) once the watcher gave up.
    A time that is not one and a count that is not a non-negative int are left out (the record is a file on disk)."""
    watch = row.get("watch")
    if status == ISSUED or not isinstance(watch, t.Mapping):
        return NONE, None
    checks = _checks(watch)
    if watch.get("stopped"):
        stopped = parse_time(watch.get("stopped"))
        cell = '<strong class="stopped">stopped</strong>'
        if stopped is not None:
            cell += ' <span class="since">since %s</span>' % _time_html(stopped.astimezone(datetime.timezone.utc))
        if checks is not None:
            cell += '<span class="checks">after %d check%s</span>' % (checks, "" if checks == 1 else "s")
        return cell, None
    if parse_time(watch.get("next_check")) is None:
        return NONE, None
    cell, key = _time_cell(watch.get("next_check"), now, "due {} ago")
    if checks is not None:
        cell += '<span class="checks">%d check%s so far</span>' % (checks, "" if checks == 1 else "s")
    return cell, key


def _row(index: int, row: t.Mapping[str, t.Any], now: t.Optional[datetime.datetime]) -> t.Tuple[str, t.Dict[str, t.Any]]:
    """One <tr> and the data the script sorts and filters it by."""
    status = _status(row)
    label = LABELS[status]
    domain, node, reason = _text(row.get("domain")), _text(row.get("node")), _text(row.get("reason"))
    message, remediation = _text(row.get("message")), _text(row.get("remediation"))
    serial, served = _text(row.get("serial")), _text(row.get("served_serial"))
    alerts = _alerts(row)
    expires, expires_key = _time_cell(row.get("not_after"), now, "expired {} ago")
    renews, renews_key = _time_cell(row.get("renew_after"), now, "due {} ago")
    next_check, next_check_key = _next_check_cell(row, status, now)

    details = []
    if message:
        details.append('<p class="msg">%s</p>' % esc(message))
    if serial:
        details.append('<p>Serial on disk: <code>%s</code></p>' % esc(serial))
    if served:
        details.append('<p>Serial served: <code>%s</code>%s</p>' % (
            esc(served), " (differs from the one on disk)" if serial and served.lower() != serial.lower() else ""))
    reason_cell = '<span class="reason">%s</span>' % _breakable(esc(reason)) if reason else NONE
    if details:
        reason_cell += '<details><summary>Details</summary>%s</details>' % "".join(details)
    lines = [line for line in remediation.splitlines() if line.strip()]
    fix_cell = ('<code class="fix">%s</code>' % "".join('<span class="rec">%s</span>' % _breakable(esc(line)) for line in lines)) if lines else NONE
    if alerts:
        alert_cell = '<strong class="alert-count">%d alert%s</strong><ul>%s</ul>' % (
            len(alerts), "" if len(alerts) == 1 else "s", "".join("<li>%s</li>" % esc(a) for a in alerts))
    else:
        alert_cell = NONE
    cells = {
        "status": '<span class="badge badge-%s">%s</span>' % (status, esc(label)),
        "domain": '<span class="domain">%s</span>' % _breakable(esc(domain)),
        "node": esc(node) if node else NONE,
        "reason": reason_cell,
        "remediation": fix_cell,
        "next_check": next_check,
        "not_after": expires,
        "renew_after": renews,
        "alerts": alert_cell,
    }
    classes = ["row-%s" % status] + (["has-alerts"] if alerts else [])
    html_row = '<tr data-i="%d" class="%s">%s</tr>' % (index, " ".join(classes), "".join(
        '<td class="c-%s%s" data-label="%s"><div class="v">%s</div></td>' % (key, " empty" if cells[key] == NONE else "", esc(header), cells[key])
        for key, header in COLUMNS))
    data = {
        "i": index, "status": status, "alerts": len(alerts), "text": " ".join([domain, node, reason]),
        "k": {"status": RANK[status], "domain": domain, "node": node, "reason": reason, "remediation": remediation,
              "next_check": next_check_key, "not_after": expires_key, "renew_after": renews_key, "alerts": len(alerts)},
    }
    return html_row, data


STYLE = """
:root{color-scheme:light;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--alert:#fff4e5;--alert-line:#bc4c00}
*{box-sizing:border-box}
[hidden]{display:none!important}
body{margin:0;padding:16px;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:1.4em;margin:0 0 4px}
.meta{color:var(--muted);margin:0 0 10px}
.summary{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:0 0 12px}
.summary li{border:1px solid var(--line);border-radius:6px;padding:4px 10px;background:#f6f8fa}
.summary strong{font-size:1.1em}
.controls{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:0 0 12px}
.controls input[type=search],.controls select{font:inherit;padding:6px 8px;border:1px solid var(--line);border-radius:6px;max-width:100%}
.controls input[type=search]{width:22em}
.counter{color:var(--muted);margin:0 0 8px}
.narrow-only{display:none}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;min-width:72em;table-layout:fixed}
th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid var(--line);overflow-wrap:anywhere}
th{background:#f6f8fa}
th.c-status{width:10em}
th.c-domain{width:14%}
th.c-node{width:5.5em}
th.c-reason{width:10%}
th.c-next_check,th.c-not_after,th.c-renew_after{width:8em}
th.c-alerts{width:13%}
.nw{white-space:nowrap}
.rel,.checks{display:block}
th button{font:inherit;font-weight:600;color:inherit;background:none;border:0;padding:0;cursor:pointer}
th button::after{content:"";color:var(--muted)}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
tr.has-alerts td{background:var(--alert)}
tr.has-alerts td:first-child{box-shadow:inset 4px 0 0 var(--alert-line)}
.badge{display:inline-block;border-radius:999px;padding:1px 9px;font-weight:600;font-size:.9em;white-space:nowrap;border:1px solid;
-webkit-print-color-adjust:exact;print-color-adjust:exact}
.badge-issued{background:#dafbe1;color:#116329;border-color:#4ac26b}
.badge-pending{background:#fff8c5;color:#7d4e00;border-color:#d4a72c}
.badge-unknown{background:#ffebe9;color:#a40e26;border-color:#ff8182}
.badge-issued::before{content:"\\2713  "}
.badge-pending::before{content:"\\2026  "}
.badge-unknown::before{content:"?  "}
.domain{font-weight:600}
.none,.rel,.checks{color:var(--muted)}
.rel,.checks{font-size:.9em}
.stopped{color:#a40e26}
code{font:.9em/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
code.fix{display:block;white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f8fa;border:1px solid var(--line);border-radius:4px;padding:2px 6px}
.rec{display:block}
.rec+.rec{border-top:1px dashed var(--line);margin-top:2px;padding-top:2px}
details summary{cursor:pointer;color:#0550ae}
details p{margin:4px 0}
.msg{white-space:pre-wrap}
.alert-count{color:var(--alert-line)}
td ul{margin:2px 0 0;padding-left:1.2em}
@media (max-width:640px){
body{padding:10px;font-size:15px}
.controls input[type=search]{width:100%}
.narrow-only{display:inline-flex}
table,tbody,tr,td{display:block;width:100%;min-width:0}
thead{display:none}
tr{border:1px solid var(--line);border-radius:8px;margin:0 0 10px;overflow:hidden}
td{display:grid;grid-template-columns:7.5em minmax(0,1fr);gap:8px;border-bottom:1px solid #eaeef2;overflow-wrap:anywhere}
td.empty{display:none}
td:last-child{border-bottom:0}
td::before{content:attr(data-label);font-weight:600;color:var(--muted)}
tr.has-alerts td:first-child{box-shadow:none}
tr.has-alerts{border-left:5px solid var(--alert-line)}
}
@media print{
body{padding:0;font-size:11px}
.table-wrap{overflow:visible}
table{min-width:0}
.controls,.narrow-only{display:none!important}
th button::after{content:""!important}
tr{break-inside:avoid}
details summary{color:inherit}
}
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("linkcert-data").textContent);
  var tbody = document.getElementById("rows");
  var rows = Array.prototype.map.call(tbody.querySelectorAll("tr[data-i]"), function (tr) {
    var row = data[Number(tr.getAttribute("data-i"))];
    row.tr = tr;
    row.search = row.text.toLowerCase();
    Object.keys(row.k).forEach(function (key) {
      if (typeof row.k[key] === "string") { row.k[key] = row.k[key].toLowerCase(); }
    });
    return row;
  });
  var query = document.getElementById("filter");
  var status = document.getElementById("status-filter");
  var alertsOnly = document.getElementById("alerts-only");
  var sortSelect = document.getElementById("sort-select");
  var counter = document.getElementById("counter");
  var noMatch = document.getElementById("no-match");
  var headers = Array.prototype.slice.call(document.querySelectorAll("th[data-key]"));
  var sortKey = "i";
  var sortDir = 1;

  function apply() {
    var needle = query.value.trim().toLowerCase();
    var want = status.value;
    var shown = 0;
    rows.forEach(function (row) {
      var ok = (!needle || row.search.indexOf(needle) !== -1) && (!want || row.status === want) &&
        (!alertsOnly.checked || row.alerts > 0);
      row.tr.hidden = !ok;
      if (ok) { shown += 1; }
    });
    counter.textContent = shown + " of " + rows.length + " domains";
    noMatch.hidden = shown !== 0 || rows.length === 0;
  }

  function key(row) { return sortKey === "i" ? row.i : row.k[sortKey]; }

  function compare(a, b) {
    var x = key(a), y = key(b);
    if (x === y) { return a.i - b.i; }
    if (x === null || x === undefined) { return 1; }
    if (y === null || y === undefined) { return -1; }
    return (x < y ? -1 : 1) * sortDir;
  }

  function sortBy(newKey, dir) {
    sortKey = newKey;
    sortDir = dir;
    rows.slice().sort(compare).forEach(function (row) { tbody.appendChild(row.tr); });
    headers.forEach(function (th) {
      th.setAttribute("aria-sort", th.getAttribute("data-key") === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none");
    });
    var value = sortKey + ":" + (sortDir > 0 ? "asc" : "desc");
    sortSelect.value = sortKey === "i" ? "i:asc" : value;
  }

  headers.forEach(function (th) {
    th.querySelector("button").addEventListener("click", function () {
      var k = th.getAttribute("data-key");
      sortBy(k, sortKey === k ? -sortDir : 1);
    });
  });
  sortSelect.addEventListener("change", function () {
    var parts = sortSelect.value.split(":");
    sortBy(parts[0], parts[1] === "desc" ? -1 : 1);
  });
  query.addEventListener("input", apply);
  status.addEventListener("change", apply);
  alertsOnly.addEventListener("change", apply);

  var opened = [];
  window.addEventListener("beforeprint", function () {
    opened = Array.prototype.filter.call(document.querySelectorAll("details:not([open])"), function (d) {
      d.open = true;
      return true;
    });
  });
  window.addEventListener("afterprint", function () {
    opened.forEach(function (d) { d.open = false; });
    opened = [];
  });

  document.getElementById("controls").hidden = false;
  apply();
}());
"""

SORT_OPTIONS = (
    ("i:asc", "Order as generated"),
    ("status:asc", "Status (needs attention first)"),
    ("domain:asc", "Domain (A-Z)"),
    ("node:asc", "Node (A-Z)"),
    ("not_after:asc", "Expires (soonest first)"),
    ("not_after:desc", "Expires (latest first)"),
    ("renew_after:asc", "Next renewal (soonest first)"),
    ("next_check:asc", "Next check (soonest first)"),
    ("alerts:desc", "Alerts (most first)"),
)


def render(rows: t.Sequence[t.Mapping[str, t.Any]], generated_at: str, title: str = "linkcert status") -> str:
    """The status page for ``rows`` (one per domain and node, shown in the given order).

    Row keys, all optional but ``domain``: ``node``, ``ssl_status`` (issued, pending, unknown; anything
    else counts as unknown), ``label`` (the badge is always worded from ``ssl_status``, so badge, counts
    and the status filter agree), ``reason``, ``message``, ``remediation`` (one record per line),
    ``not_after`` and ``renew_after`` (ISO 8601, UTC when no offset is given), ``serial``,
    ``served_serial``, ``alerts`` (a list of strings) and ``watch`` (the pending watcher's
    ``{since, attempts, next_check, stopped}``, shown for rows not issued). Times are shown in UTC and
    relative to ``generated_at``.
    """
    now = parse_time(generated_at)
    rendered = [_row(index, row, now) for index, row in enumerate(rows)]
    counts = {status: 0 for status in LABELS}
    for _html, data in rendered:
        counts[data["status"]] += 1
    alert_rows = sum(1 for _html, data in rendered if data["alerts"])
    alert_total = sum(data["alerts"] for _html, data in rendered)
    domains = len({_text(row.get("domain")) for row in rows})
    nodes = len({_text(row.get("node")) for row in rows if _text(row.get("node"))})
    total = len(rendered)

    summary = "".join('<li class="count-%s"><span class="badge badge-%s">%s</span> <strong>%d</strong></li>' % (
        status, status, esc(LABELS[status]), counts[status]) for status in (ISSUED, PENDING, UNKNOWN))
    summary += '<li class="count-alerts">Alerts <strong>%d</strong>%s</li>' % (
        alert_total, (" on %d row%s" % (alert_rows, "" if alert_rows == 1 else "s")) if alert_total else "")
    if now is not None:
        utc = now.astimezone(datetime.timezone.utc)
        generated_html = '<time datetime="%s">%s</time>' % (esc(utc.strftime("%Y-%m-%dT%H:%M:%SZ")), esc(utc.strftime("%Y-%m-%d %H:%M:%S UTC")))
    else:
        generated_html = esc(generated_at)
    status_options = '<option value="">All statuses</option>' + "".join(
        '<option value="%s">%s</option>' % (status, esc(LABELS[status])) for status in (ISSUED, PENDING, UNKNOWN))
    sort_options = "".join('<option value="%s">%s</option>' % (value, esc(text)) for value, text in SORT_OPTIONS)
    head = "".join('<th scope="col" class="c-%s" data-key="%s" aria-sort="none"><button type="button">%s</button></th>' % (key, key, esc(header))
                   for key, header in COLUMNS)
    body = "\n".join(html_row for html_row, _data in rendered)
    if not rendered:
        body = '<tr class="empty"><td colspan="%d">No domains.</td></tr>' % len(COLUMNS)

    page = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="meta">Generated at {generated}. {total} row{total_s}: {domains} domain{domains_s} on {nodes} node{nodes_s}.</p>
<ul class="summary" aria-label="Counts per status">{summary}</ul>
</header>
<main>
<div class="controls" id="controls" role="search" hidden>
<label>Filter <input type="search" id="filter" placeholder="domain, node or reason" autocomplete="off" spellcheck="false"></label>
<label>Status <select id="status-filter">{status_options}</select></label>
<label><input type="checkbox" id="alerts-only"> Alerts only</label>
<label class="narrow-only">Sort <select id="sort-select">{sort_options}</select></label>
</div>
<p class="counter" id="counter" aria-live="polite">{total} of {total} domains</p>
<div class="table-wrap">
<table id="status-table">
<thead><tr>{head}</tr></thead>
<tbody id="rows">
{body}
</tbody>
</table>
</div>
<p id="no-match" hidden>No domain matches the filter.</p>
</main>
<script type="application/json" id="linkcert-data">{data}</script>
<script>{script}</script>
</body>
</html>
""".format(
        csp=esc(CSP), title=esc(title), style=STYLE, generated=generated_html, total=total, total_s="" if total == 1 else "s",
        domains=domains, domains_s="" if domains == 1 else "s", nodes=nodes, nodes_s="" if nodes == 1 else "s",
        summary=summary, status_options=status_options, sort_options=sort_options, head=head, body=body,
        data=script_json([data for _html, data in rendered]), script=SCRIPT)
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")
