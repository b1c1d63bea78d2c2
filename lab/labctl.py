"""Local ACME lab for mailops.linkcert: Pebble, pebble-challtestsrv and nginx.

Usage::

    python lab/labctl.py start|stop|status|env|restart
    python lab/labctl.py seed FILE

All configuration comes from ``LINKCERT_LAB_*`` environment variables (see
``Lab.from_env``); all state (CA, PID files, logs, generated configs, webroot,
``lab.env``) lives under ``LINKCERT_LAB_DIR`` (default ``<repo>/.lab``).

The module is importable without side effects; tests use :class:`Lab` and
:func:`free_port` / :func:`free_ports` directly.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

REPO_DIR = Path(__file__).resolve().parent.parent

#: Port keys understood by :class:`Lab` and the environment variable for each.
PORT_ENV: Dict[str, str] = {
    "acme": "LINKCERT_LAB_ACME_PORT",
    "acme_mgmt": "LINKCERT_LAB_ACME_MGMT_PORT",
    "tls": "LINKCERT_LAB_TLS_PORT",
    "dns": "LINKCERT_LAB_DNS_PORT",
    "dns_mgmt": "LINKCERT_LAB_DNS_MGMT_PORT",
    "http": "LINKCERT_LAB_HTTP_PORT",
}
DEFAULT_PORTS: Dict[str, int] = {"acme": 14000, "acme_mgmt": 15000, "tls": 5001, "dns": 8053, "dns_mgmt": 8055, "http": 80}
PORT_KEYS: Tuple[str, ...] = tuple(PORT_ENV)

#: Service name -> executable basename, in start order.
SERVICES: Dict[str, str] = {"challtestsrv": "pebble-challtestsrv", "pebble": "pebble", "nginx": "nginx"}

PEBBLE_ENV_DEFAULTS: Dict[str, str] = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
#: Seed-file placeholders: ``{{ lab_addr }}`` (where the lab listens) and ``{{ edge_addr }}`` (where the
#: customers' names must lead: the edge serving them, the lab's own address unless LINKCERT_LAB_EDGE_ADDR says).
PLACEHOLDERS: Tuple[str, ...] = ("lab_addr", "edge_addr")
DEFAULT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

#: DNS record kind -> (set endpoint, clear endpoint) of the challtestsrv management API.
DNS_ENDPOINTS: Dict[str, Tuple[str, str]] = {
    "a": ("/add-a", "/clear-a"),
    "aaaa": ("/add-aaaa", "/clear-aaaa"),
    "caa": ("/add-caa", "/clear-caa"),
    "cname": ("/set-cname", "/clear-cname"),
    "txt": ("/set-txt", "/clear-txt"),
    "servfail": ("/set-servfail", "/clear-servfail"),
}

PathLike = Union[str, "os.PathLike[str]"]


NOWHERE_IPV4 = "127.0.0.9"


def _read_env_file(path: Path) -> Dict[str, str]:
    """KEY=value lines of a lab.env written earlier; {} when there is none."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value.strip().strip("'\"")
    return values


class LabError(RuntimeError):
    """A lab operation failed; the message is meant for humans."""


@dataclass(frozen=True)
class ServiceStatus:
    """State of one lab service as reported by :meth:`Lab.status`."""

    name: str
    enabled: bool
    running: bool
    pid: Optional[int]
    address: str

    def line(self) -> str:
        """Render a one-line human readable status."""
        if not self.enabled:
            return f"{self.name:<13} disabled"
        state = "running" if self.running else "stopped"
        pid = f"pid {self.pid}" if self.pid else "pid -"
        return f"{self.name:<13} {state:<8} {pid:<11} {self.address}"


@dataclass
class _Listen:
    """A socket a service is expected to bind."""

    addr: str
    port: int
    proto: str
    env_var: str


@dataclass
class _Spec:
    """Everything needed to launch and probe one service."""

    name: str
    argv: List[str]
    env: Dict[str, str]
    listens: List[_Listen]
    ready: Callable[[], bool]


# --------------------------------------------------------------------------- helpers


def hostport(addr: str, port: int) -> str:
    """Join an address and a port, bracketing IPv6 literals."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def write_pebble_root(env: Mapping[str, str], dest: PathLike, timeout: float = 10.0) -> Path:
    """Fetch the root certificate a running lab's Pebble issues under (its management API, verified with the
    lab CA) into ``dest``; ``env`` is the lab's variables (``Lab.env()``, or lab.json as read)."""
    context = ssl.create_default_context(cafile=env["LINKCERT_LAB_CA_BUNDLE"])
    with urllib.request.urlopen(env["LINKCERT_LAB_PEBBLE_MGMT"] + "/roots/0", context=context, timeout=timeout) as response:
        data = response.read()
    path = Path(dest)
    path.write_bytes(data)
    return path


def free_ports(count: int, addr: str = "127.0.0.1") -> List[int]:
    """Return ``count`` distinct ports that are currently free for TCP and UDP on ``addr``."""
    held: List[socket.socket] = []
    ports: List[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(_family(addr), socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((addr, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(_family(addr), socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind((addr, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(addr: str = "127.0.0.1") -> int:
    """Return one port that is currently free (TCP and UDP) on ``addr``."""
    return free_ports(1, addr)[0]


def port_busy(addr: str, port: int, proto: str = "tcp") -> bool:
    """Tell whether ``addr:port`` cannot be bound right now."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(_family(addr), kind) as sock:
        if proto == "tcp":
            # Like the servers we start: ignore TIME_WAIT leftovers, still fail on listeners.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return True
    return False


def _tcp_open(addr: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return True
    except OSError:
        return False


def _find_binary(name: str) -> str:
    """Locate an executable on PATH or in the usual sbin/bin directories."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return name


def pebble_binaries(repo_dir: Optional[PathLike] = None) -> Dict[str, str]:
    """Every Pebble the lab can run, by version ("2.4", "2.6"): the host's package, and the other Debian release's
    that scripts/fetch_pebble.sh unpacked under .work/pebble/VERSION."""
    found: Dict[str, str] = {}
    system = _find_binary("pebble")
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "pebble"], capture_output=True, text=True,
                                 check=False, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    match = re.match(r"(\d+\.\d+)", version)
    if match and os.access(system, os.X_OK):
        found[match.group(1)] = system
    for binary in sorted(Path(repo_dir or REPO_DIR).glob(".work/pebble/*/usr/bin/pebble")):
        if os.access(binary, os.X_OK):
            found.setdefault(binary.parents[2].name, str(binary))
    return found


def _supports_flag(binary: str, flag: str) -> bool:
    """Tell whether a Go binary lists ``-flag`` in its ``-h`` output."""
    try:
        out = subprocess.run([binary, "-h"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=10, check=False).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.strip().split(" ")[0] == f"-{flag}" for line in out.splitlines())


def _write_file(path: Path, data: Union[str, bytes], mode: int = 0o644) -> None:
    """Write a file atomically with the given permissions."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read_cmdline(pid: int) -> List[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect an exited child of ours, if it is one."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    _reap(pid)
    return os.path.exists(f"/proc/{pid}") and not _is_zombie(pid)


def _tail(path: Path, offset: int = 0, lines: int = 20) -> str:
    """Return the last ``lines`` lines of ``path`` written after ``offset``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _ngx_str(value: PathLike) -> str:
    """Quote a path for an nginx configuration file."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fqdn(host: str) -> str:
    """Return the lower-cased, dot-terminated form the challtestsrv API matches on."""
    host = host.strip().lower()
    if not host:
        raise LabError("empty host name in DNS data")
    return host if host.endswith(".") else host + "."


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _caa_policy(item: Any) -> Dict[str, str]:
    """Normalise ``{tag, value}`` or ``"issue letsencrypt.org"`` to the API shape."""
    if isinstance(item, Mapping):
        return {"tag": str(item["tag"]), "value": str(item.get("value", ""))}
    tag, _sep, value = str(item).partition(" ")
    return {"tag": tag, "value": value.strip().strip('"')}


def _substitute(obj: Any, values: Mapping[str, str]) -> Any:
    """Replace the ``{{ lab_addr }}`` / ``{{ edge_addr }}`` placeholders in every string of ``obj``."""
    if isinstance(obj, str):
        return re.sub(r"\{\{\s*(%s)\s*\}\}" % "|".join(PLACEHOLDERS), lambda m: values[m.group(1)], obj)
    if isinstance(obj, Mapping):
        return {key: _substitute(val, values) for key, val in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_substitute(val, values) for val in obj]
    return obj


def _parse_eab(raw: str) -> Dict[str, str]:
    """Parse ``kid:hmac,kid2:hmac2`` into a dict."""
    keys: Dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        kid, sep, mac = pair.partition(":")
        if not sep or not kid or not mac:
            raise LabError(f"LINKCERT_LAB_EAB: expected kid:base64urlhmac, got {pair!r}")
        keys[kid] = mac
    return keys


def _env_number(env: Mapping[str, str], name: str, default: Any, cast: Callable[[str], Any] = int) -> Any:
    """Read a numeric environment variable, returning ``default`` when unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise LabError(f"{name} must be a number, got {raw!r}") from None


# --------------------------------------------------------------------------- certificates


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert: Any) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _san_entries(names: Iterable[str]) -> List[Any]:
    from cryptography import x509

    entries: List[Any] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _new_cert(subject: str, issuer: Any, issuer_key: Any, key: Any, days: int, extensions: Sequence[Tuple[Any, bool]]) -> Any:
    """Build and sign a certificate with common fields filled in."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = _utcnow()
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer if issuer is not None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(**flags: bool) -> Any:
    from cryptography import x509

    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: flags.get(name, False) for name in names})


def _make_ca() -> Tuple[Any, Any]:
    """Create a self-signed EC P-256 CA valid for 10 years."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _new_cert("linkcert lab CA", None, key, key, 3653, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), True),
    ])
    return key, cert


def _make_server_cert(ca_key: Any, ca_cert: Any, names: Sequence[str]) -> Tuple[Any, Any]:
    """Issue an EC P-256 TLS server certificate for ``names`` signed by the lab CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _new_cert("linkcert lab server", ca_cert.subject, ca_key, key, 825, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        (x509.SubjectAlternativeName(_san_entries(names)), False),
    ])
    return key, cert


def _pem_cert(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _server_cert_ok(server_pem: Path, ca_cert: Any, names: Sequence[str]) -> bool:
    """Tell whether the existing server certificate is usable for ``names`` for 30+ days."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(server_pem.read_bytes())
        present = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    fresh = _not_after(cert) - _utcnow() > datetime.timedelta(days=30)
    return fresh and cert.issuer == ca_cert.subject and set(_san_entries(names)) <= present


# --------------------------------------------------------------------------- the lab


class Lab:
    """The local ACME lab rooted at one state directory."""

    def __init__(self, dir: PathLike, addr: str = "127.0.0.1", ports: Optional[Mapping[str, int]] = None, *,
                 extra_addrs: Sequence[str] = (), default_ipv4: Optional[str] = None, cert_validity: Optional[int] = None,
                 nginx: bool = True, eab: Optional[Mapping[str, str]] = None, pebble_env: Optional[Mapping[str, str]] = None,
                 timeout: float = DEFAULT_TIMEOUT, binaries: Optional[Mapping[str, str]] = None,
                 domain_blocklist: Sequence[str] = (), edge_addr: Optional[str] = None,
                 serve_root: Optional[PathLike] = None, serve_port: int = 0) -> None:
        """Describe a lab; nothing is touched on disk until :meth:`start`.

        With ``serve_root`` (a certificate root as acme_http01_cert writes it) and ``serve_port``, nginx
        also serves TLS on that port, each name with ``serve_root/NAME/{fullchain,privkey}.pem`` as
        found on disk at the handshake: what a client sees is what the live symlink points at.
        """
        self.dir = Path(dir).expanduser().resolve()
        self.addr = addr
        self.edge_addr = edge_addr or addr
        self.extra_addrs = [a for a in extra_addrs if a and a != addr]
        unknown = set(ports or {}) - set(PORT_KEYS)
        if unknown:
            raise LabError(f"unknown port keys {sorted(unknown)}; expected {list(PORT_KEYS)}")
        self.ports: Dict[str, int] = {key: int(val) for key, val in {**DEFAULT_PORTS, **(ports or {})}.items()}
        # Names without lab data resolve to a loopback address where nothing listens, so an
        # unconfigured name never looks as if it routed to the edge (and Pebble fails fast).
        self.default_ipv4 = default_ipv4 or NOWHERE_IPV4
        self.cert_validity = cert_validity
        # Names Pebble refuses to issue for (its domainBlocklist), to exercise a CA's rejectedIdentifier.
        self.domain_blocklist = [d for d in domain_blocklist if d]
        self.nginx = nginx
        self.serve_root = Path(serve_root).resolve() if serve_root else None
        self.serve_port = int(serve_port)
        if self.serve_root is not None and not 0 < self.serve_port < 65536:
            raise LabError("serve_root needs a serve_port")
        self.eab: Dict[str, str] = dict(eab or {})
        self.pebble_env: Dict[str, str] = {**PEBBLE_ENV_DEFAULTS, **(pebble_env or {})}
        self.timeout = timeout
        self.binaries: Dict[str, str] = {name: _find_binary(exe) for name, exe in SERVICES.items()}
        self.binaries.update(binaries or {})
        self._procs: Dict[str, subprocess.Popen] = {}
        self._validate()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Lab":
        """Build a lab from ``LINKCERT_LAB_*`` / ``PEBBLE_*`` variables in ``env``."""
        addr = env.get("LINKCERT_LAB_ADDR", "").strip() or "127.0.0.1"
        lab_dir = Path(env.get("LINKCERT_LAB_DIR", "").strip() or REPO_DIR / ".lab")
        # A port set to "auto" is a free one, chosen at the first start and read back from lab.env afterwards.
        recorded = _read_env_file(lab_dir / "lab.env")
        ports = {}
        for key, var in PORT_ENV.items():
            if env.get(var, "").strip().lower() == "auto":
                ports[key] = int(recorded[var]) if recorded.get(var, "").isdigit() else free_port(addr)
            else:
                ports[key] = int(_env_number(env, var, DEFAULT_PORTS[key]))
        pebble_env = {key: val for key, val in env.items() if key.startswith("PEBBLE_")}
        return cls(
            dir=lab_dir,
            addr=addr,
            ports=ports,
            extra_addrs=[a.strip() for a in env.get("LINKCERT_LAB_EXTRA_ADDRS", "").split(",") if a.strip()],
            default_ipv4=env.get("LINKCERT_LAB_DEFAULT_IPV4", "").strip() or None,
            cert_validity=_env_number(env, "LINKCERT_LAB_CERT_VALIDITY", None),
            domain_blocklist=[d.strip() for d in env.get("LINKCERT_LAB_DOMAIN_BLOCKLIST", "").split(",") if d.strip()],
            nginx=env.get("LINKCERT_LAB_NGINX", "1").strip().lower() not in ("0", "false", "no", "off"),
            eab=_parse_eab(env.get("LINKCERT_LAB_EAB", "")),
            pebble_env=pebble_env,
            timeout=_env_number(env, "LINKCERT_LAB_TIMEOUT", DEFAULT_TIMEOUT, float),
            edge_addr=env.get("LINKCERT_LAB_EDGE_ADDR", "").strip() or None,
        )

    def _validate(self) -> None:
        """Reject out-of-range or clashing ports and nonsensical durations."""
        for key, port in self.ports.items():
            if not 0 < port < 65536:
                raise LabError(f"{PORT_ENV[key]}: port {port} out of range")
        listening = ["acme", "acme_mgmt", "dns", "dns_mgmt"] + (["http"] if self.nginx else [])
        seen: Dict[int, str] = {}
        for key in listening:
            port = self.ports[key]
            if port in seen:
                raise LabError(f"{PORT_ENV[key]} and {PORT_ENV[seen[port]]} both use port {port}")
            seen[port] = key
        if self.cert_validity is not None and self.cert_validity <= 0:
            raise LabError("LINKCERT_LAB_CERT_VALIDITY must be a positive number of seconds")
        if self.timeout <= 0:
            raise LabError("LINKCERT_LAB_TIMEOUT must be a positive number of seconds")
        try:
            ipaddress.ip_address(self.edge_addr)
        except ValueError:
            raise LabError(f"LINKCERT_LAB_EDGE_ADDR: {self.edge_addr!r} is not an IP address") from None

    # ------------------------------------------------------------------ paths

    @property
    def ca_dir(self) -> Path:
        """Directory holding the lab CA and the server certificate."""
        return self.dir / "ca"

    @property
    def ca_bundle(self) -> Path:
        """PEM file clients must trust to talk to Pebble."""
        return self.ca_dir / "ca.pem"

    @property
    def webroot(self) -> Path:
        """HTTP-01 webroot served by the lab nginx."""
        return self.dir / "webroot"

    @property
    def env_file(self) -> Path:
        """Shell ``KEY=value`` file written by :meth:`start`."""
        return self.dir / "lab.env"

    def pid_file(self, name: str) -> Path:
        """PID file of service ``name``."""
        return self.dir / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        """stdout/stderr log of service ``name``."""
        return self.dir / "log" / f"{name}.log"

    @property
    def services(self) -> List[str]:
        """Enabled services in start order."""
        return [name for name in SERVICES if name != "nginx" or self.nginx]

    @property
    def placeholders(self) -> Dict[str, str]:
        """Values of the seed-file placeholders."""
        return {"lab_addr": self.addr, "edge_addr": self.edge_addr}

    @property
    def all_addrs(self) -> List[str]:
        """Main address followed by the extra ones."""
        return [self.addr] + self.extra_addrs

    # ------------------------------------------------------------------ environment

    def env(self) -> Dict[str, str]:
        """Variables clients use to reach the lab (the content of ``lab.env``)."""
        acme = hostport(self.addr, self.ports["acme"])
        values = {
            "LINKCERT_LAB_DIR": str(self.dir),
            "LINKCERT_LAB_ADDR": self.addr,
            "LINKCERT_LAB_EDGE_ADDR": self.edge_addr,
            "LINKCERT_LAB_EXTRA_ADDRS": ",".join(self.extra_addrs),
            "LINKCERT_LAB_DEFAULT_IPV4": self.default_ipv4,
        }
        values.update({var: str(self.ports[key]) for key, var in PORT_ENV.items()})
        values.update({
            "LINKCERT_LAB_ACME_DIRECTORY": f"https://{acme}/dir",
            "LINKCERT_LAB_CA_BUNDLE": str(self.ca_bundle),
            "LINKCERT_LAB_RESOLVER": hostport(self.addr, self.ports["dns"]),
            "LINKCERT_LAB_DNS_MGMT": f"http://{hostport(self.addr, self.ports['dns_mgmt'])}",
            "LINKCERT_LAB_WEBROOT": str(self.webroot),
            "LINKCERT_LAB_PEBBLE_MGMT": f"https://{hostport(self.addr, self.ports['acme_mgmt'])}",
        })
        return values

    def env_text(self) -> str:
        """Render :meth:`env` as shell ``KEY=value`` lines."""
        return "".join(f"{key}={shlex.quote(val) if val else ''}\n" for key, val in self.env().items())

    # ------------------------------------------------------------------ generated files

    def _prepare_dirs(self) -> None:
        for sub in ("ca", "run", "log", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        challenge = self.webroot / ".well-known" / "acme-challenge"
        challenge.mkdir(parents=True, exist_ok=True)
        for folder in (self.webroot, self.webroot / ".well-known", challenge):
            folder.chmod(0o755)

    def ensure_certs(self) -> None:
        """Create the lab CA once, and (re)issue the server certificate when needed."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        ca_key_path = self.ca_dir / "ca.key"
        if self.ca_bundle.exists() and ca_key_path.exists():
            ca_cert = x509.load_pem_x509_certificate(self.ca_bundle.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        else:
            ca_key, ca_cert = _make_ca()
            _write_file(ca_key_path, _pem_key(ca_key), 0o600)
            _write_file(self.ca_bundle, _pem_cert(ca_cert))
        names = ["localhost", "127.0.0.1"] + self.all_addrs
        if not _server_cert_ok(self.ca_dir / "server.pem", ca_cert, names):
            key, cert = _make_server_cert(ca_key, ca_cert, names)
            _write_file(self.ca_dir / "server.key", _pem_key(key), 0o600)
            _write_file(self.ca_dir / "server.pem", _pem_cert(cert))

    def pebble_config(self) -> Dict[str, Any]:
        """The Pebble JSON configuration for this lab."""
        conf: Dict[str, Any] = {
            "listenAddress": hostport(self.addr, self.ports["acme"]),
            "managementListenAddress": hostport(self.addr, self.ports["acme_mgmt"]),
            "certificate": str(self.ca_dir / "server.pem"),
            "privateKey": str(self.ca_dir / "server.key"),
            "httpPort": self.ports["http"],
            "tlsPort": self.ports["tls"],
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab),
        }
        if self.eab:
            conf["externalAccountMACKeys"] = dict(self.eab)
        if self.cert_validity:
            conf["certificateValidityPeriod"] = int(self.cert_validity)
        if self.domain_blocklist:
            conf["domainBlocklist"] = list(self.domain_blocklist)
        return {"pebble": conf}

    def nginx_config(self) -> str:
        """The nginx configuration serving the HTTP-01 webroot."""
        d = self.dir
        listens = "".join(f"        listen {hostport(a, self.ports['http'])} default_server;\n" for a in self.all_addrs)
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "".join(f"    {kind}_temp_path {_ngx_str(d / 'tmp' / ('nginx-' + kind))};\n"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return (
            f"# generated by lab/labctl.py - do not edit\n{user}daemon off;\nworker_processes 1;\n"
            f"pid {_ngx_str(self.pid_file('nginx'))};\nerror_log {_ngx_str(self.log_file('nginx'))} notice;\n"
            "events {\n    worker_connections 128;\n}\n"
            "http {\n"
            f"    access_log {_ngx_str(d / 'log' / 'nginx-access.log')};\n{temps}"
            "    server_tokens off;\n    default_type application/octet-stream;\n"
            f"    server {{\n{listens}        server_name _;\n"
            "        location ^~ /.well-known/acme-challenge/ {\n"
            f"            root {_ngx_str(self.webroot)};\n            default_type text/plain;\n        }}\n"
            "        location / {\n            return 404;\n        }\n    }\n"
            f"{self._serve_config()}}}\n"
        )

    def _serve_config(self) -> str:
        if self.serve_root is None:
            return ""
        root = self.serve_root
        return (
            f"    server {{\n        listen {hostport(self.addr, self.serve_port)} ssl;\n        server_name _;\n"
            f"        ssl_certificate {_ngx_str(str(root) + '/$ssl_server_name/fullchain.pem')};\n"
            f"        ssl_certificate_key {_ngx_str(str(root) + '/$ssl_server_name/privkey.pem')};\n"
            "        location / {\n            return 200 \"served\\n\";\n        }\n    }\n"
        )

    def _write_configs(self) -> None:
        _write_file(self.dir / "pebble-config.json", json.dumps(self.pebble_config(), indent=2) + "\n")
        if self.nginx:
            _write_file(self.dir / "nginx.conf", self.nginx_config())

    # ------------------------------------------------------------------ service specs

    def _spec(self, name: str) -> _Spec:
        return {"challtestsrv": self._challtestsrv_spec, "pebble": self._pebble_spec, "nginx": self._nginx_spec}[name]()

    def _challtestsrv_spec(self) -> _Spec:
        binary = self.binaries["challtestsrv"]
        dns = ",".join(hostport(a, self.ports["dns"]) for a in self.all_addrs)
        argv = [binary, "-dns01", dns, "-management", hostport(self.addr, self.ports["dns_mgmt"]),
                "-http01", "", "-https01", "", "-tlsalpn01", ""]
        if _supports_flag(binary, "doh"):
            argv += ["-doh", ""]
        argv += ["-defaultIPv4", self.default_ipv4, "-defaultIPv6", ""]
        listens = [_Listen(a, self.ports["dns"], proto, PORT_ENV["dns"]) for a in self.all_addrs for proto in ("udp", "tcp")]
        listens.append(_Listen(self.addr, self.ports["dns_mgmt"], "tcp", PORT_ENV["dns_mgmt"]))
        return _Spec("challtestsrv", argv, dict(os.environ), listens,
                     lambda: _tcp_open(self.addr, self.ports["dns_mgmt"]) and _tcp_open(self.addr, self.ports["dns"]))

    def _pebble_spec(self) -> _Spec:
        argv = [self.binaries["pebble"], "-config", str(self.dir / "pebble-config.json"),
                "-dnsserver", hostport(self.addr, self.ports["dns"])]
        env = {key: val for key, val in os.environ.items() if not key.startswith("PEBBLE_")}
        env.update(self.pebble_env)
        listens = [_Listen(self.addr, self.ports[key], "tcp", PORT_ENV[key]) for key in ("acme", "acme_mgmt")]
        return _Spec("pebble", argv, env, listens, self._acme_ready)

    def _nginx_spec(self) -> _Spec:
        argv = [self.binaries["nginx"], "-c", str(self.dir / "nginx.conf"), "-p", f"{self.dir}/", "-e", str(self.log_file("nginx"))]
        listens = [_Listen(a, self.ports["http"], "tcp", PORT_ENV["http"]) for a in self.all_addrs]
        return _Spec("nginx", argv, dict(os.environ), listens, lambda: _tcp_open(self.addr, self.ports["http"]))

    def _address(self, name: str) -> str:
        if name == "challtestsrv":
            dns = ",".join(hostport(a, self.ports["dns"]) for a in self.all_addrs)
            return f"dns {dns} mgmt http://{hostport(self.addr, self.ports['dns_mgmt'])}"
        if name == "pebble":
            return f"acme {self.env()['LINKCERT_LAB_ACME_DIRECTORY']} mgmt {self.env()['LINKCERT_LAB_PEBBLE_MGMT']}"
        return "http " + ",".join(f"http://{hostport(a, self.ports['http'])}/" for a in self.all_addrs)

    # ------------------------------------------------------------------ process bookkeeping

    def _is_ours(self, name: str, pid: int) -> bool:
        """Tell whether ``pid`` is this lab's ``name`` service (binary and lab dir both match)."""
        argv = _read_cmdline(pid)
        if not argv or _is_zombie(pid):
            return False
        exe = os.path.basename(argv[0].split(" ")[0]).rstrip(":")
        if exe != os.path.basename(self.binaries[name]):
            return False
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        return cwd == str(self.dir) or str(self.dir) in " ".join(argv)

    def _read_pid(self, name: str) -> Optional[int]:
        try:
            return int(self.pid_file(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running_pid(self, name: str) -> Optional[int]:
        """PID of service ``name`` if its PID file points to a live process of ours."""
        pid = self._read_pid(name)
        return pid if pid and self._is_ours(name, pid) else None

    def pids(self) -> Dict[str, int]:
        """PIDs of the running services."""
        return {name: pid for name in self.services for pid in [self.running_pid(name)] if pid}

    def status(self) -> Dict[str, ServiceStatus]:
        """Status of every service (nginx is reported as disabled when turned off)."""
        result: Dict[str, ServiceStatus] = {}
        for name in SERVICES:
            enabled = name in self.services
            pid = self.running_pid(name) if enabled else None
            result[name] = ServiceStatus(name, enabled, pid is not None, pid, self._address(name))
        return result

    def is_running(self) -> bool:
        """True when every enabled service runs."""
        return all(st.running for st in self.status().values() if st.enabled)

    # ------------------------------------------------------------------ start

    def start(self) -> List[str]:
        """Start every service that is not running; return the names started (idempotent)."""
        missing = [name for name in self.services if self.running_pid(name) is None]
        if not missing:
            return []
        self._prepare_dirs()
        self.ensure_certs()
        self._write_configs()
        specs = [self._spec(name) for name in missing]
        self._check_ports(specs)
        started: List[str] = []
        try:
            for spec in specs:
                started.append(spec.name)  # before launching, so a half-started service is cleaned up too
                self._launch(spec)
        except BaseException:
            for name in reversed(started):
                self._stop_service(name)
            raise
        _write_file(self.env_file, self.env_text())
        _write_file(self.dir / "lab.json", json.dumps(self.env(), indent=2, sort_keys=True) + "\n")
        return started

    def _check_ports(self, specs: Sequence[_Spec]) -> None:
        for spec in specs:
            for lis in spec.listens:
                if port_busy(lis.addr, lis.port, lis.proto):
                    raise LabError(f"{spec.name}: port {lis.port} busy ({lis.proto} on {lis.addr}, {lis.env_var}); "
                                   f"choose another port or stop whatever is listening there")

    def _launch(self, spec: _Spec) -> None:
        """Spawn one service, record its PID and wait until it answers."""
        log = self.log_file(spec.name)
        with open(log, "ab") as handle:
            handle.write(f"=== {_utcnow().isoformat()} labctl start: {shlex.join(spec.argv)}\n".encode())
            handle.flush()
            offset = handle.tell()
            try:
                proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                        cwd=self.dir, env=spec.env, start_new_session=True, close_fds=True)
            except OSError as exc:
                raise LabError(f"{spec.name}: cannot execute {spec.argv[0]}: {exc}") from None
        self._procs[spec.name] = proc
        _write_file(self.pid_file(spec.name), f"{proc.pid}\n")
        self._wait_ready(spec, proc, log, offset)

    def _wait_ready(self, spec: _Spec, proc: subprocess.Popen, log: Path, offset: int) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise self._failure(spec, f"exited with status {code}", log, offset)
            if spec.ready():
                return
            if time.monotonic() > deadline:
                raise self._failure(spec, f"not ready after {self.timeout:g}s", log, offset)
            time.sleep(0.1)

    def _failure(self, spec: _Spec, reason: str, log: Path, offset: int) -> LabError:
        tail = _tail(log, offset)
        busy = [lis for lis in spec.listens if any(f":{lis.port}" in line and "in use" in line.lower() for line in tail.splitlines())]
        if busy:
            reason = f"port {busy[0].port} busy ({busy[0].env_var}); {reason}"
        where = ", ".join(sorted({hostport(lis.addr, lis.port) for lis in spec.listens}))
        return LabError(f"{spec.name} failed to start on {where}: {reason}\n--- last lines of {log} ---\n{tail}")

    def _acme_ready(self) -> bool:
        try:
            return "newNonce" in self.acme_directory(timeout=2.0)
        except (OSError, ValueError, http.client.HTTPException, LabError):
            return False

    # ------------------------------------------------------------------ stop

    def stop(self) -> List[str]:
        """Stop every service of this lab that runs; return the names stopped (idempotent)."""
        stopped: List[str] = []
        for name in reversed(list(SERVICES)):
            if self._stop_service(name):
                stopped.append(name)
        return stopped

    def restart(self) -> List[str]:
        """Stop then start the lab."""
        self.stop()
        return self.start()

    def _stop_service(self, name: str) -> bool:
        """Terminate service ``name`` if its PID file names a process of ours; always drop the PID file."""
        pid = self._read_pid(name)
        ours = False
        if pid is not None and self._is_ours(name, pid):
            self._terminate(name, pid)
            ours = True
        self._procs.pop(name, None)
        try:
            self.pid_file(name).unlink()
        except FileNotFoundError:
            pass
        return ours

    def _terminate(self, name: str, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)
        if self._wait_gone(name, pid, STOP_TIMEOUT):
            return
        try:
            os.killpg(pid, signal.SIGKILL)  # the service leads its own session/process group
        except OSError:
            os.kill(pid, signal.SIGKILL)
        if not self._wait_gone(name, pid, 5.0):
            raise LabError(f"{name} (pid {pid}) survived SIGKILL")

    def _wait_gone(self, name: str, pid: int, timeout: float) -> bool:
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.05)
        return not _alive(pid)

    # ------------------------------------------------------------------ ACME helpers

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying TLS context that trusts only the lab CA."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def acme_directory(self, timeout: float = 5.0) -> Dict[str, Any]:
        """Fetch Pebble's ACME directory over verified HTTPS."""
        url = self.env()["LINKCERT_LAB_ACME_DIRECTORY"]
        if not self.ca_bundle.exists():
            raise LabError(f"no CA bundle at {self.ca_bundle}")
        with urllib.request.urlopen(url, timeout=timeout, context=self.ssl_context()) as resp:
            return json.loads(resp.read().decode())

    # ------------------------------------------------------------------ DNS helpers

    def dns_post(self, endpoint: str, payload: Mapping[str, Any]) -> None:
        """POST JSON to the challtestsrv management API."""
        url = f"http://{hostport(self.addr, self.ports['dns_mgmt'])}{endpoint}"
        req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise LabError(f"challtestsrv {endpoint} {payload}: HTTP {exc.code}") from None
        except OSError as exc:
            raise LabError(f"challtestsrv management API at {url} unreachable: {exc}") from None

    def dns_clear(self, kind: str, host: str) -> None:
        """Remove all ``kind`` data (a, aaaa, caa, cname, txt, servfail) for ``host``."""
        self.dns_post(self._endpoints(kind)[1], {"host": _fqdn(host)})

    def dns_set(self, kind: str, host: str, value: Any = True, replace: bool = True) -> None:
        """Set ``kind`` data for ``host``; with ``replace`` the old data of that kind is cleared first.

        ``value`` is an address or list (a/aaaa), a target (cname), a string or list (txt),
        ``{tag, value}`` dicts or ``"issue ca.example"`` strings (caa), or a bool (servfail).
        A false servfail or an empty cname clears that data.
        """
        set_ep, _clear_ep = self._endpoints(kind)
        kind, fqdn = kind.lower(), _fqdn(host)
        if kind in ("servfail", "cname") and not value:
            self.dns_clear(kind, host)
            return
        if replace and kind in ("a", "aaaa", "caa", "txt"):
            self.dns_clear(kind, host)
        values = _as_list(value)
        if kind in ("a", "aaaa") and values:
            self.dns_post(set_ep, {"host": fqdn, "addresses": [str(v) for v in values]})
        elif kind == "caa" and values:
            self.dns_post(set_ep, {"host": fqdn, "policies": [_caa_policy(v) for v in values]})
        elif kind == "cname":
            self.dns_post(set_ep, {"host": fqdn, "target": _fqdn(str(value))})
        elif kind == "txt":
            for txt in values:
                self.dns_post(set_ep, {"host": fqdn, "value": str(txt)})
        elif kind == "servfail":
            self.dns_post(set_ep, {"host": fqdn})

    def dns_set_default_ipv4(self, ip: str) -> None:
        """Change the A answer for names without data."""
        self.dns_post("/set-default-ipv4", {"ip": ip})

    @staticmethod
    def _endpoints(kind: str) -> Tuple[str, str]:
        try:
            return DNS_ENDPOINTS[kind.lower()]
        except KeyError:
            raise LabError(f"unknown DNS kind {kind!r}; expected one of {sorted(DNS_ENDPOINTS)}") from None

    def seed(self, source: Union[PathLike, Mapping[str, Any]]) -> int:
        """Apply DNS data from a YAML file or an already parsed mapping; return the number of records."""
        data = self._load_seed(source)
        if data.get("default_ipv4"):
            self.dns_set_default_ipv4(str(data["default_ipv4"]))
        records = data.get("records") or []
        if not isinstance(records, list):
            raise LabError("seed data: 'records' must be a list")
        for record in records:
            self._apply_record(record)
        return len(records)

    def _load_seed(self, source: Union[PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
        if isinstance(source, Mapping):
            data: Any = _substitute(dict(source), self.placeholders)
        else:
            import yaml

            try:
                data = yaml.safe_load(_substitute(Path(source).read_text(), self.placeholders)) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise LabError(f"cannot load seed file {source}: {exc}") from None
        if not isinstance(data, Mapping):
            raise LabError("seed data must be a mapping with a 'records' list")
        return dict(data)

    def _apply_record(self, record: Any) -> None:
        if not isinstance(record, Mapping) or not record.get("host"):
            raise LabError(f"seed record without host: {record!r}")
        unknown = set(record) - {"host"} - set(DNS_ENDPOINTS)
        if unknown:
            raise LabError(f"seed record {record['host']}: unknown keys {sorted(unknown)}")
        for kind in DNS_ENDPOINTS:
            if kind in record:
                self.dns_set(kind, str(record["host"]), record[kind])


# --------------------------------------------------------------------------- CLI


def _cmd_start(lab: Lab, _args: argparse.Namespace) -> int:
    started = lab.start()
    if started:
        print(f"started: {', '.join(started)}")
    else:
        print("lab already running")
    _print_status(lab)
    print(f"environment: {lab.env_file}")
    return 0


def _cmd_stop(lab: Lab, _args: argparse.Namespace) -> int:
    stopped = lab.stop()
    print(f"stopped: {', '.join(stopped)}" if stopped else "lab not running")
    return 0


def _print_status(lab: Lab) -> bool:
    states = lab.status()
    for state in states.values():
        print(state.line())
    return all(st.running for st in states.values() if st.enabled)


def _cmd_status(lab: Lab, _args: argparse.Namespace) -> int:
    return 0 if _print_status(lab) else 3


def _cmd_env(lab: Lab, _args: argparse.Namespace) -> int:
    sys.stdout.write(lab.env_text())
    return 0


def _cmd_seed(lab: Lab, args: argparse.Namespace) -> int:
    count = lab.seed(args.file)
    print(f"seeded {count} records from {args.file} into {lab.env()['LINKCERT_LAB_DNS_MGMT']}")
    return 0


def _cmd_restart(lab: Lab, args: argparse.Namespace) -> int:
    lab.stop()
    return _cmd_start(lab, args)


def build_parser() -> argparse.ArgumentParser:
    """The ``labctl`` argument parser."""
    parser = argparse.ArgumentParser(prog="labctl.py", description="Run the local Pebble/challtestsrv/nginx ACME lab. "
                                     "Configured only through LINKCERT_LAB_* environment variables.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (("start", _cmd_start, "start the lab (idempotent)"),
                                 ("stop", _cmd_stop, "stop the lab (idempotent)"),
                                 ("status", _cmd_status, "show service status; exit 3 unless all run"),
                                 ("env", _cmd_env, "print lab.env style KEY=value lines"),
                                 ("restart", _cmd_restart, "stop then start")):
        sub.add_parser(name, help=helptext).set_defaults(func=func)
    seed = sub.add_parser("seed", help="load DNS data from a YAML file into challtestsrv")
    seed.add_argument("file")
    seed.set_defaults(func=_cmd_seed)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        lab = Lab.from_env(os.environ)
        return int(args.func(lab, args))
    except LabError as exc:
        print(f"labctl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
