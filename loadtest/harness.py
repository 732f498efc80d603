#!/usr/bin/env python3
"""Seawall measured side by side with nginx and HAProxy, in one run, on loopback.

Fair by construction: every proxy is pinned to the same core (taskset), one worker/thread each;
the backend (nginx `return 200`) and the load generator share the other core; same connection
counts and the same upstream keep-alive for all. Each scenario runs against each peer in turn,
for several alternating rounds; figures are medians with their range.

Figures per scenario and peer: requests/s, CPU microseconds per request of the proxy process
(utime+stime from /proc/PID/stat over the run / requests), peak RSS, errors, and the ratios
Seawall/nginx and Seawall/HAProxy.

Usage: loadtest/run [--rounds N] [--duration S] [--scenarios a,b] [--peers seawall,nginx]
       [--smoke] [--out DIR]
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROXY_CORE = "0"
LOAD_CORE = "1"

SMALL_JSON = '{"accountId":"1001","name":"Grace Hopper","balance":"2071.71","currency":"USD"}'


SOAP_PATH = "/CustomerService.svc"


@dataclass
class Scenario:
    """One load shape. Adding a scenario is adding one of these to SCENARIOS."""

    name: str
    title: str
    path: str
    method: str = "GET"
    body_bytes: int = 0
    connections: int = 50
    # Sends `Authorization: Bearer <the run's RS256 token>` (one token reused, as Genesys does).
    bearer: bool = False
    # Peers that can run it (None: all).
    peers: tuple = None
    # Which listener: "plain" (HTTP), "tls" (HTTPS, ECDSA P-256) or "mtls" (HTTPS that requires a
    # client certificate; driven by oha, as wrk cannot present one).
    listener: str = "plain"
    # A new connection, so a new full TLS handshake, for every request (no session resumption).
    new_connection: bool = False
    # Answers are expected to be refusals (429 from a usage plan): non-2xx are not errors.
    refused: bool = False
    # The backend location it reaches when that is not `path` ("": none, a SQL lookup).
    backend_path: str = None


SCENARIOS = [
    Scenario("small", "GET, small JSON answer, keep-alive, 50 connections", "/small"),
    Scenario("16k", "GET, 16 KB answer, keep-alive, 50 connections", "/16k"),
    Scenario("post2k", "POST with a 2 KB JSON body, 50 connections", "/post", method="POST", body_bytes=2048),
    Scenario("small_c200", "GET, small JSON answer, 200 connections", "/small", connections=200),
    Scenario("small_c1000", "GET, small JSON answer, 1000 connections", "/small", connections=1000),
    # IP allowlist + JWT RS256 (iss, aud, exp, alg checked) against HAProxy's jwt_verify + ACLs;
    # nginx (open source) has no JWT check.
    Scenario("genesys_route", "GET, IP allowlist + JWT RS256, small JSON, 50 connections", "/secure",
             bearer=True, peers=("seawall", "haproxy")),
    # Nearly every request over the route's usage plan: the cost of a refusal (429).
    Scenario("throttled", "GET over a 50 req/s usage plan: 429s, 50 connections", "/limited", refused=True),
    # Every request a hit of the proxy's own cache (nginx proxy_cache, HAProxy cache).
    Scenario("cache_hit", "GET, small JSON answer from the proxy's cache, 50 connections", "/cached"),
    Scenario("tls_small", "HTTPS keep-alive (ECDSA P-256, TLS 1.3), small JSON, 50 connections", "/small",
             listener="tls"),
    Scenario("tls_handshake", "HTTPS, a new connection and full handshake per request, 50 connections", "/small",
             listener="tls", new_connection=True),
    Scenario("mtls_small", "HTTPS + client certificate, keep-alive, small JSON, 50 connections", "/small",
             listener="mtls"),
    Scenario("mtls_handshake", "HTTPS + client certificate, full handshake per request, 50 connections", "/small",
             listener="mtls", new_connection=True),
    # Mediations (Seawall only): what turning REST into the backend's language costs, against
    # `small` (a plain proxy hop to the same backend) in the same run.
    Scenario("soap_mediation", "GET -> SOAP 1.1 envelope -> XML answer mapped to JSON, 50 connections",
             "/customers/42", peers=("seawall",), backend_path=SOAP_PATH),
    Scenario("soap_script", "the same SOAP mediation with Lua before/after hooks, 50 connections",
             "/scripted/customers/42", peers=("seawall",), backend_path=SOAP_PATH),
    Scenario("sql_lookup", "GET -> one bound SELECT on SQLite -> JSON (no HTTP backend), 50 connections",
             "/balance/ACC-1001", peers=("seawall",), backend_path=""),
]

# The baseline peer "pingora" (examples/bare_pingora.rs: Pingora's smallest proxy with Seawall's
# build profile and allocator) proxies and nothing else, so it runs the plain proxy scenarios,
# the same over TLS, and `cache_hit` as the floor of any Pingora-served hit (it answers /cached
# from memory, with no cache behind it). Seawall against it is what Seawall's own work costs; it
# against nginx is Pingora's.
BARE_PINGORA_SCENARIOS = ("small", "16k", "post2k", "small_c200", "small_c1000", "cache_hit", "tls_small",
                          "tls_handshake")

# The mediation scenarios' pieces.
SOAP_ANSWER = ('<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
               '<s:Body><GetCustomerResponse xmlns="urn:crm"><Customer vip="true"><Name>Ada Lovelace</Name>'
               '<Tier>2</Tier><Accounts><Account><Number>ACC-1001</Number></Account><Account><Number>ACC-1002'
               '</Number></Account></Accounts></Customer></GetCustomerResponse></s:Body></s:Envelope>')
# The shipped mediations (plugins/ in the repository) are what the scenarios measure.
PLUGINS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins")

JWT_ISSUER = "https://idp.loadtest"
JWT_AUDIENCE = "api://ivr-data-dips"

IDLE_CONNECTIONS = 10_000
# Open-loop rates (requests/s) for the latency figures: below every peer's saturation on one core.
LATENCY_RATES = [2_000, 10_000, 20_000]
LATENCY_PATH = "/small"
LATENCY_CONNECTIONS = 50
# Throttle accuracy: a usage plan of THROTTLE_RATE requests/s (burst THROTTLE_RATE) offered
# THROTTLE_OVERLOAD times that, open loop, for THROTTLE_SECS.
THROTTLE_RATE = 50
THROTTLE_OVERLOAD = 5
THROTTLE_SECS = 20
# Thundering herd: HERD_SIZE requests at once for one cold key, the backend answering in
# HERD_DELAY_SECS; what counts is how many reach the backend.
HERD_SIZE = 1000
HERD_DELAY_SECS = 0.2
HERD_PREFIX = "/herd/"
# Open files per process; the sandboxes these run in allow at most 20,000 (hard limit).
NOFILE = 20_000


# ---------------------------------------------------------------- parsing (unit-tested)

def parse_wrk(output):
    """Requests, requests/s and errors from wrk's text output."""
    requests = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", output, re.M)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.M)
    if not requests or not rps:
        raise ValueError("not wrk output: " + output[:200])
    socket_errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        socket_errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    return {"requests": int(requests.group(1)), "rps": float(rps.group(1)), "errors": socket_errors + non2xx,
            "socket_errors": socket_errors, "non2xx": non2xx}


OHA_CUT_OFF = "aborted due to deadline"


def parse_oha(text):
    """p50/p99/p99.9 latency (ms), requests/s and errors from `oha --output-format json`."""
    data = json.loads(text)
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    errors = sum(int(n) for code, n in codes.items() if not str(code).startswith("2"))
    # Requests still in flight when the run's duration ends are cut off by oha, not failed.
    errors += sum(int(n) for kind, n in data.get("errorDistribution", {}).items() if kind != OHA_CUT_OFF)
    return {
        "p50_ms": (pct.get("p50") or 0) * 1000,
        "p99_ms": (pct.get("p99") or 0) * 1000,
        "p999_ms": (pct.get("p99.9") or 0) * 1000,
        "rps": data["summary"]["requestsPerSec"],
        "requests": sum(int(n) for n in codes.values()),
        "errors": errors,
        "error_kinds": {**{f"status {c}": int(n) for c, n in codes.items() if not str(c).startswith("2")},
                        **{k: int(n) for k, n in data.get("errorDistribution", {}).items() if k != OHA_CUT_OFF}},
    }


def parse_proc_stat(text):
    """utime + stime in clock ticks from /proc/PID/stat (the command may contain spaces)."""
    after = text[text.rindex(")") + 2:].split()
    # fields after the command start at field 3 (state); utime is field 14, stime 15
    return int(after[11]) + int(after[12])


def parse_status_kb(text, key):
    match = re.search(r"^%s:\s+(\d+) kB" % key, text, re.M)
    return int(match.group(1)) if match else 0


def summarize(values):
    """Median and range of a list of numbers."""
    values = sorted(values)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}


def ratio(a, b):
    return a / b if b else float("nan")


# ---------------------------------------------------------------- configs (unit-tested)

def backend_nginx_conf(port, workdir):
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/backend.pid;
error_log {workdir}/backend-error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        default_type application/json;
        location = /small {{ return 200 '{SMALL_JSON}'; }}
        location = /16k {{ alias {workdir}/16k.json; }}
        location = /post {{ client_body_buffer_size 64k; return 200 '{SMALL_JSON}'; }}
        location = /secure {{ return 200 '{SMALL_JSON}'; }}
        location = /limited {{ return 200 '{SMALL_JSON}'; }}
        location = /cached {{ add_header Cache-Control "max-age=3600"; return 200 '{SMALL_JSON}'; }}
        location = {SOAP_PATH} {{ default_type "text/xml; charset=utf-8"; return 200 '{SOAP_ANSWER}'; }}
        location = /backend_status {{ stub_status; }}
        location / {{ return 404; }}
    }}
}}
"""


def nginx_conf(port, backend_port, workdir, access_log, tls_ports=None, slow_port=None):
    log = f"access_log {workdir}/nginx-access.log;" if access_log else "access_log off;"
    # proxy_cache (files under the work dir, in the page cache) with proxy_cache_lock: without the
    # lock nginx sends every concurrent miss to the backend.
    cache = """
            proxy_cache hot;
            proxy_cache_valid 200 60s;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
    herd = ""
    if slow_port:
        herd = f"""
        location {HERD_PREFIX} {{{cache}
            proxy_pass http://slow;
        }}"""
    proxy = """
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }"""
    tls = ""
    if tls_ports:
        certs = (f"ssl_certificate {workdir}/server.pem; ssl_certificate_key {workdir}/server.key; "
                 "ssl_protocols TLSv1.2 TLSv1.3;")
        tls = f"""
    server {{
        listen 127.0.0.1:{tls_ports[0]} ssl backlog=65535;
        {certs}{proxy}
    }}
    server {{
        listen 127.0.0.1:{tls_ports[1]} ssl backlog=65535;
        {certs}
        ssl_client_certificate {workdir}/ca.pem; ssl_verify_client on; ssl_session_tickets off;{proxy}
    }}"""
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
worker_rlimit_nofile {NOFILE};
events {{ worker_connections 19000; }}
http {{
    {log}
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    limit_req_zone $server_port zone=plan:1m rate={THROTTLE_RATE}r/s;
    limit_req_status 429;
    proxy_cache_path {workdir}/nginx-cache levels=1:2 keys_zone=hot:10m max_size=256m inactive=1h;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    upstream slow {{
        server 127.0.0.1:{slow_port or backend_port};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location = /cached {{{cache}
            proxy_pass http://backend;
        }}{herd}
        location = /limited {{
            limit_req zone=plan burst={THROTTLE_RATE} nodelay;
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}{proxy}
    }}{tls}
}}
"""


def haproxy_conf(port, backend_port, workdir, access_log, tls_ports=None, slow_port=None):
    log = "log stdout format raw local0\n    option httplog" if access_log else "no log"
    tls = ""
    if tls_ports:
        tls = (f"\n    bind 127.0.0.1:{tls_ports[0]} ssl crt {workdir}/server-combined.pem ssl-min-ver TLSv1.2 backlog 65535"
               f"\n    bind 127.0.0.1:{tls_ports[1]} ssl crt {workdir}/server-combined.pem ssl-min-ver TLSv1.2"
               f" ca-file {workdir}/ca.pem verify required no-tls-tickets backlog 65535")
    return f"""
global
    nbthread 1
    ulimit-n {NOFILE}
    no strict-limits
    maxconn {IDLE_CONNECTIONS + 100}
    # No TLS session cache: with it, the mTLS handshake scenario would resume sessions (TLS 1.3
    # stateful tickets) where nginx and Seawall make full handshakes.
    tune.ssl.cachesize 0
    pidfile {workdir}/haproxy.pid
cache hot
    total-max-size 256
    max-object-size 1048576
    max-age 60
defaults
    mode http
    {log}
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend public
    bind 127.0.0.1:{port} backlog 65535{tls}
    acl secure path /secure
    acl limited path /limited
    stick-table type string len 16 size 16 expire 10s store http_req_rate(1s)
    http-request track-sc0 str(limited) if limited
    http-request deny deny_status 429 if limited {{ sc_http_req_rate(0) gt {THROTTLE_RATE} }}
    http-request deny if secure !{{ src 127.0.0.0/8 }}
    http-request set-var(txn.bearer) http_auth_bearer if secure
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg') if secure
    http-request set-var(txn.now) date() if secure
    http-request deny status 401 if secure !{{ var(txn.jwt_alg) -m str RS256 }}
    http-request deny status 401 if secure !{{ var(txn.bearer),jwt_payload_query('$.iss') -m str {JWT_ISSUER} }}
    http-request deny status 401 if secure !{{ var(txn.bearer),jwt_payload_query('$.aud') -m str {JWT_AUDIENCE} }}
    http-request deny status 401 if secure {{ var(txn.bearer),jwt_payload_query('$.exp','int'),sub(txn.now) -m int lt 0 }}
    http-request deny status 401 if secure !{{ var(txn.bearer),jwt_verify(txn.jwt_alg,"{workdir}/jwt.pub.pem") -m int 1 }}
    use_backend be_cached if {{ path /cached }}
    use_backend be_herd if {{ path_beg {HERD_PREFIX} }}
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port} maxconn 4096
backend be_cached
    http-request cache-use hot
    http-response cache-store hot
    server s1 127.0.0.1:{backend_port} maxconn 4096
backend be_herd
    http-request cache-use hot
    http-response cache-store hot
    server s1 127.0.0.1:{slow_port or backend_port} maxconn 4096
"""


def seawall_conf(port, admin_port, backend_port, access_log, workdir="/tmp", tls_ports=None, slow_port=None):
    tls = ""
    if tls_ports:
        tls = f"""
  - name: tls
    address: "127.0.0.1:{tls_ports[0]}"
    tls: {{ cert: "{workdir}/server.pem", key: "{workdir}/server.key" }}
  - name: mtls
    address: "127.0.0.1:{tls_ports[1]}"
    tls:
      cert: "{workdir}/server.pem"
      key: "{workdir}/server.key"
      client_auth: {{ mode: required, ca: ["{workdir}/ca.pem"] }}"""
    return f"""
server:
  threads: 1
  grace_period_secs: 1
  upstream_keepalive_pool_size: 4096
logging:
  level: warn
  format: json
  access_log: {str(access_log).lower()}
listeners:
  - name: public
    address: "127.0.0.1:{port}"{tls}
admin:
  address: "127.0.0.1:{admin_port}"
ip_allowlists:
  local: {{ cidrs: [127.0.0.0/8] }}
jwt_providers:
  idp:
    issuer: {JWT_ISSUER}
    public_key_pem: "{workdir}/jwt.pub.pem"
    audiences: [{JWT_AUDIENCE}]
    algorithms: [RS256]
upstreams:
  backend:
    targets: ["127.0.0.1:{backend_port}"]
  slow:
    targets: ["127.0.0.1:{slow_port or backend_port}"]
plugins_dir: "{workdir}/plugins"
databases:
  crm_db: {{ url: "sqlite://{workdir}/crm.db", max_connections: 4 }}
routes:
  - id: customer
    match: {{ method: GET, path: "/customers/{{customerId}}" }}
    upstream: backend
    mediation: customer
    timeout_ms: 10000
  - id: scripted
    match: {{ method: GET, path: "/scripted/customers/{{customerId}}" }}
    upstream: backend
    mediation: scripted
    timeout_ms: 10000
  - id: balance
    match: {{ method: GET, path: "/balance/{{accountId}}" }}
    mediation: balance
    timeout_ms: 10000
  - id: cached
    match: {{ method: GET, path: "/cached" }}
    upstream: backend
    timeout_ms: 10000
    cache: {{ ttl_secs: 60 }}
  - id: herd
    match: {{ method: GET, path: "{HERD_PREFIX}{{key}}" }}
    upstream: slow
    timeout_ms: 10000
    cache: {{ ttl_secs: 60, vary: [path.key] }}
  - id: secure
    match: {{ method: GET, path: "/secure" }}
    allow_ips: [local]
    auth: {{ jwt: idp }}
    rate_limit: {{ requests_per_sec: 1000000, burst: 1000000, key: client }}
    upstream: backend
    timeout_ms: 10000
  - id: limited
    match: {{ method: GET, path: "/limited" }}
    rate_limit: {{ requests_per_sec: {THROTTLE_RATE}, burst: {THROTTLE_RATE}, key: route }}
    upstream: backend
    timeout_ms: 10000
  - id: small
    match: {{ method: GET, path: "/small" }}
    upstream: backend
    timeout_ms: 10000
  - id: large
    match: {{ method: GET, path: "/16k" }}
    upstream: backend
    timeout_ms: 10000
  - id: post
    match: {{ method: POST, path: "/post" }}
    upstream: backend
    timeout_ms: 10000
    max_body_bytes: 65536
"""


def make_mediations(workdir):
    """The mediation folders the Seawall config names (the shipped ones: `customer` without its
    Lua script, `scripted` with it, `balance`) and the SQLite database of accounts."""
    import sqlite3
    plugins = os.path.join(workdir, "plugins")
    shipped = {
        "customer": ("crm-customer", ["mediation.yaml", "request.xml.j2"]),
        "scripted": ("crm-customer", ["mediation.yaml", "request.xml.j2", "script.lua"]),
        "balance": ("account-balance", ["mediation.yaml"]),
    }
    for name, (source, files) in shipped.items():
        os.makedirs(os.path.join(plugins, name), exist_ok=True)
        for file in files:
            with open(os.path.join(PLUGINS_DIR, source, file)) as f:
                text = f.read()
            if name == "customer" and file == "mediation.yaml":
                text = "\n".join(line for line in text.splitlines() if not line.startswith("script:")) + "\n"
            with open(os.path.join(plugins, name, file), "w") as f:
                f.write(text)
    db = os.path.join(workdir, "crm.db")
    if os.path.exists(db):
        os.remove(db)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance NUMERIC NOT NULL, currency TEXT NOT NULL, "
                     "updated_at TEXT)")
        conn.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?)",
                         [(f"ACC-{1000 + i}", 12.5 * i, "USD", "2026-11-30T08:00:00Z") for i in range(1, 1001)])


def b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(workdir, lifetime_secs=86400):
    """An RSA key pair (jwt.pem, jwt.pub.pem) in `workdir` and an RS256 token signed with it by
    the openssl CLI, as an IdP would issue for the Genesys integration."""
    key = os.path.join(workdir, "jwt.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", os.path.join(workdir, "jwt.pub.pem")],
                   check=True, capture_output=True)
    os.chmod(os.path.join(workdir, "jwt.pub.pem"), 0o644)
    now = int(time.time())
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "genesys", "azp": "genesys",
                                 "iat": now, "exp": now + lifetime_secs, "scope": "ivr.read"}).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input,
                               check=True, capture_output=True).stdout
    return f"{header}.{payload}.{b64url(signature)}"


def make_tls_material(workdir):
    """With the openssl CLI: a CA, an ECDSA P-256 server certificate for 127.0.0.1 / localhost, a
    client certificate, and the server's certificate + key in one file (HAProxy's `crt`)."""
    def run(*argv):
        subprocess.run(argv, check=True, capture_output=True, cwd=workdir)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-days", "30", "-subj", "/CN=loadtest CA", "-keyout", "ca.key",
        "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, cn, san, usage in [("server", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth"),
                                 ("client", "dataactions.loadtest", "DNS:dataactions.loadtest", "clientAuth")]:
        run("openssl", "req", *ec, "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        ext = os.path.join(workdir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-extfile", ext, "-out", f"{name}.pem")
    with open(os.path.join(workdir, "server-combined.pem"), "w") as out:
        for part in ("server.pem", "server.key"):
            with open(os.path.join(workdir, part)) as f:
                out.write(f.read())
    for name in ("ca.pem", "server.pem", "client.pem", "client.key"):
        os.chmod(os.path.join(workdir, name), 0o644)


def wrk_post_script(body_bytes):
    filler = "x" * max(0, body_bytes - len('{"note":""}'))
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = '{{\"note\":\"{filler}\"}}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, NOFILE) if hard != resource.RLIM_INFINITY else NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


@dataclass
class Peer:
    name: str
    port: int
    argv: list
    workdir: str
    logfile: str
    proc: subprocess.Popen = None
    pids: list = field(default_factory=list)
    # listener kind -> port ("plain" is `port`)
    ports: dict = field(default_factory=dict)

    def start(self):
        out = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            ["taskset", "-c", PROXY_CORE] + self.argv,
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=raise_nofile, start_new_session=True,
        )
        wait_port(self.port)
        time.sleep(0.3)
        self.pids = process_tree(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM if self.name in ("nginx", "haproxy") else signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cpu_ticks(self):
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    total += parse_proc_stat(f.read())
            except FileNotFoundError:
                pass
        return total

    def memory_kb(self, key):
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += parse_status_kb(f.read(), key)
            except FileNotFoundError:
                pass
        return total


def process_tree(pid):
    """The pid and its descendants (nginx's master and worker)."""
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        children = []
    for child in children:
        pids.extend(process_tree(int(child)))
    return pids


def runs_scenario(peer_name, scenario):
    if scenario.peers and peer_name not in scenario.peers:
        return False
    return peer_name != "pingora" or scenario.name in BARE_PINGORA_SCENARIOS


def make_peers(names, seawall_bin, backend_port, workdir, access_log, variants=None, slow_port=None,
               pingora_bin=None):
    """`variants` maps extra peer names to other Seawall binaries (A/B runs: `--variant`);
    `pingora_bin` is the bare Pingora proxy (peer "pingora"), which keeps no access log."""
    variants = variants or {}
    peers = []
    tag = "logs" if access_log else "nologs"
    for name in names:
        port = free_port()
        tls_ports = (free_port(), free_port())
        logfile = os.path.join(workdir, f"{name}-{tag}.out")
        if name == "seawall" or name in variants:
            conf = os.path.join(workdir, f"{name}-{tag}.yaml")
            with open(conf, "w") as f:
                f.write(seawall_conf(port, free_port(), backend_port, access_log, workdir, tls_ports, slow_port))
            argv = [variants.get(name, seawall_bin), "run", "-c", conf]
        elif name == "nginx":
            conf = os.path.join(workdir, f"nginx-{tag}.conf")
            with open(conf, "w") as f:
                f.write(nginx_conf(port, backend_port, workdir, access_log, tls_ports, slow_port))
            argv = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf, "-p", workdir, "-e", os.path.join(workdir, "nginx-error.log")]
        elif name == "pingora":
            answer = os.path.join(workdir, "small.json")
            with open(answer, "w") as f:
                f.write(SMALL_JSON)
            argv = [pingora_bin, f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}",
                    "--tls", f"127.0.0.1:{tls_ports[0]}", f"{workdir}/server.pem", f"{workdir}/server.key",
                    "--answer", answer]
        elif name == "haproxy":
            conf = os.path.join(workdir, f"haproxy-{tag}.cfg")
            with open(conf, "w") as f:
                f.write(haproxy_conf(port, backend_port, workdir, access_log, tls_ports, slow_port))
            argv = [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", conf]
        else:
            raise ValueError(f"unknown peer {name}")
        peers.append(Peer(name, port, argv, workdir, logfile,
                          ports={"plain": port, "tls": tls_ports[0], "mtls": tls_ports[1]}))
    return peers


# ---------------------------------------------------------------- measurements

def run_load(peer, scenario, duration, workdir, token=None):
    """Closed loop: wrk, or oha where a client certificate is needed."""
    port = peer.ports.get(scenario.listener, peer.port)
    if scenario.listener == "mtls":
        return run_oha_closed(port, scenario, duration, workdir)
    return run_wrk(port, scenario, duration, workdir, token)


def run_oha_closed(port, scenario, duration, workdir):
    argv = ["taskset", "-c", LOAD_CORE, "oha", "-z", f"{duration}s", "-c", str(scenario.connections), "--no-tui",
            "--output-format", "json", "--cacert", f"{workdir}/ca.pem", "--cert", f"{workdir}/client.pem",
            "--key", f"{workdir}/client.key"]
    if scenario.new_connection:
        argv.append("--disable-keepalive")
    argv.append(f"https://127.0.0.1:{port}{scenario.path}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, preexec_fn=raise_nofile)
    if out.returncode != 0:
        raise RuntimeError("oha failed: " + out.stderr[:300])
    return parse_oha(out.stdout)


def run_wrk(port, scenario, duration, workdir, token=None):
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{scenario.connections}", f"-d{duration}s", "--timeout", "5s"]
    if scenario.bearer:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if scenario.new_connection:
        argv += ["-H", "Connection: close"]
    if scenario.method == "POST":
        script = os.path.join(workdir, f"post-{scenario.body_bytes}.lua")
        with open(script, "w") as f:
            f.write(wrk_post_script(scenario.body_bytes))
        argv += ["-s", script]
    scheme = "http" if scenario.listener == "plain" else "https"
    argv.append(f"{scheme}://127.0.0.1:{port}{scenario.path}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, preexec_fn=raise_nofile)
    return parse_wrk(out.stdout)


def measure(peer, scenario, duration, workdir, token=None):
    # warm-up: connections, pools, caches
    run_load(peer, scenario, 1, workdir, token)
    before = peer.cpu_ticks()
    result = run_load(peer, scenario, duration, workdir, token)
    if scenario.refused:
        result["errors"] = result.get("socket_errors", result["errors"])
    after = peer.cpu_ticks()
    cpu_seconds = (after - before) / CLK_TCK
    result["cpu_us_per_request"] = cpu_seconds * 1e6 / result["requests"] if result["requests"] else float("nan")
    result["peak_rss_kb"] = peer.memory_kb("VmHWM")
    return result


def run_oha(port, rate, duration):
    """Open loop at a fixed rate, coordinated omission corrected."""
    argv = ["taskset", "-c", LOAD_CORE, "oha", "-z", f"{duration}s", "-q", str(rate), "-c", str(LATENCY_CONNECTIONS),
            "--latency-correction", "--no-tui", "--output-format", "json", f"http://127.0.0.1:{port}{LATENCY_PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, preexec_fn=raise_nofile)
    if out.returncode != 0:
        raise RuntimeError("oha failed: " + out.stderr[:300])
    return parse_oha(out.stdout)


def backend_requests(port):
    """The backend nginx's request counter (stub_status), this request included."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /backend_status HTTP/1.0\r\nHost: b\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return parse_stub_status(data.decode())


def parse_stub_status(text):
    """Requests handled, from nginx's stub_status page."""
    match = re.search(r"^\s*\d+\s+\d+\s+(\d+)\s*$", text, re.M)
    if not match:
        raise ValueError("not a stub_status page: " + text[:200])
    return int(match.group(1))


def throttle_accuracy(peer, backend_port, seconds=THROTTLE_SECS):
    """Offers THROTTLE_OVERLOAD × the plan's rate, open loop, and reports what the backend saw."""
    rate = THROTTLE_RATE * THROTTLE_OVERLOAD
    argv = ["taskset", "-c", LOAD_CORE, "oha", "-z", f"{seconds}s", "-q", str(rate), "-c", "20", "--no-tui",
            "--output-format", "json", f"http://127.0.0.1:{peer.port}/limited"]
    before_backend, before_cpu = backend_requests(backend_port), peer.cpu_ticks()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=raise_nofile)
    after_cpu, after_backend = peer.cpu_ticks(), backend_requests(backend_port)
    data = json.loads(out.stdout)
    codes = {str(k): int(v) for k, v in data.get("statusCodeDistribution", {}).items()}
    elapsed = data["summary"]["total"]
    passed = after_backend - before_backend - 1  # the second status request
    rejected = codes.get("429", 0) + codes.get("503", 0)
    cpu_us = (after_cpu - before_cpu) / CLK_TCK * 1e6
    return {
        "offered_rps": sum(codes.values()) / elapsed,
        "backend_rps": passed / elapsed,
        "accuracy": passed / elapsed / THROTTLE_RATE,
        "ceiling": (THROTTLE_RATE + THROTTLE_RATE * elapsed) / elapsed,
        "rejected": rejected,
        "cpu_us_per_request": cpu_us / max(sum(codes.values()), 1),
        "codes": codes,
    }


class SlowBackend:
    """The herd's backend: answers every request after HERD_DELAY_SECS (cacheable for a minute)
    and counts what it was asked. asyncio in a thread of the harness, on loopback."""

    def __init__(self):
        self.port = free_port()
        self.count = 0
        self.loop = None
        self.thread = None

    async def _serve(self, reader, writer):
        body = SMALL_JSON.encode()
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=60\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.count += 1
                await asyncio.sleep(HERD_DELAY_SECS)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # `stop` cancels open connections; ending here (not cancelled) keeps Python 3.11's
            # stream callback from logging a CancelledError traceback for each of them.
            pass
        finally:
            writer.close()

    def start(self):
        import threading
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            server = self.loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=4096))
            ready.set()
            try:
                self.loop.run_forever()
            finally:
                server.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self):
        if not self.loop:
            return

        async def shutdown():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def parse_status_line(head):
    """The status code of an HTTP/1.1 answer head."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not match:
        raise ValueError("not an HTTP answer: " + head[:80].decode(errors="replace"))
    return int(match.group(1))


def thundering_herd(peer, slow, key, size=HERD_SIZE):
    """`size` connections opened first, then one GET each for the same cold key sent at once;
    reports how many requests reached the backend, the answers and how long the herd took."""

    async def connect(sem):
        async with sem:
            return await asyncio.open_connection("127.0.0.1", peer.port)

    async def answer(reader):
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        return parse_status_line(head)

    async def main():
        sem = asyncio.Semaphore(500)
        conns = await asyncio.gather(*(connect(sem) for _ in range(size)))
        request = f"GET {HERD_PREFIX}{key} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        before = slow.count
        started = time.monotonic()
        for _, writer in conns:
            writer.write(request)
        statuses = await asyncio.wait_for(asyncio.gather(*(answer(r) for r, _ in conns), return_exceptions=True),
                                          timeout=60)
        elapsed = time.monotonic() - started
        for _, writer in conns:
            writer.close()
        return slow.count - before, statuses, elapsed

    raise_nofile()
    queries, statuses, elapsed = asyncio.run(main())
    codes = {}
    for st in statuses:
        name = str(st) if isinstance(st, int) else "error"
        codes[name] = codes.get(name, 0) + 1
    return {"requests": size, "backend_queries": queries, "codes": codes, "seconds": elapsed,
            "errors": size - codes.get("200", 0)}


def idle_connections(peer, count):
    """RSS growth of the proxy while `count` keep-alive connections sit idle after one request."""
    import asyncio

    async def one(sem, conns):
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
            writer.write(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            conns.append(writer)

    async def main():
        conns = []
        sem = asyncio.Semaphore(500)
        before = peer.memory_kb("VmRSS")
        await asyncio.gather(*(one(sem, conns) for _ in range(count)))
        await asyncio.sleep(1.0)
        after = peer.memory_kb("VmRSS")
        for w in conns:
            w.close()
        return before, after, len(conns)

    raise_nofile()
    before, after, opened = asyncio.run(main())
    return {"rss_before_kb": before, "rss_after_kb": after, "connections": opened,
            "kb_per_1000": (after - before) * 1000 / max(opened, 1)}


# ---------------------------------------------------------------- report

def table(results, scenarios, peers, title):
    lines = [f"### {title}", "",
             "| scenario | peer | requests/s | CPU µs/request | peak RSS MB | errors | CPU ratio vs nginx | vs HAProxy "
             "| vs bare Pingora |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        r = results.get(s.name, {})
        base = {p: r[p]["cpu_us_per_request"]["median"] for p in r}
        for p in peers:
            if p not in r:
                continue
            x = r[p]
            cpu = x["cpu_us_per_request"]
            rel_n = f"{ratio(cpu['median'], base['nginx']):.2f}×" if "nginx" in base else "–"
            rel_h = f"{ratio(cpu['median'], base['haproxy']):.2f}×" if "haproxy" in base else "–"
            rel_p = f"{ratio(cpu['median'], base['pingora']):.2f}×" if "pingora" in base else "–"
            lines.append(
                f"| {s.name} | {p} | {x['rps']['median']:.0f} | {cpu['median']:.1f} ({cpu['min']:.1f}–{cpu['max']:.1f}) | "
                f"{x['peak_rss_kb'] / 1024:.1f} | {x['errors']} | {rel_n} | {rel_h} | {rel_p} |")
    return "\n".join(lines)


def mediation_table(results, scenarios):
    """What a mediation adds to Seawall's CPU per request, against its own plain proxy hop
    (`small`, the same backend and answer size class) in the same run."""
    plain = results.get("small", {}).get("seawall")
    rows = [s for s in scenarios if s.backend_path is not None and "seawall" in results.get(s.name, {})]
    if not plain or not rows:
        return ""
    base = plain["cpu_us_per_request"]["median"]
    lines = ["| mediation | Seawall CPU µs/request | added vs the plain proxy hop (small) | added / plain hop |",
             "|---|---|---|---|"]
    for s in rows:
        cpu = results[s.name]["seawall"]["cpu_us_per_request"]["median"]
        lines.append(f"| {s.name} | {cpu:.1f} | {cpu - base:+.1f} | {ratio(cpu - base, base):.2f}× |")
    return "\n".join(lines)


def herd_table(herd):
    """Backend queries per peer for a herd on a cold key, every round."""
    lines = ["Thundering herd: each connection sends one GET for the same cold key, all at once; the "
             f"backend answers in {HERD_DELAY_SECS * 1000:.0f} ms (cacheable). nginx: `proxy_cache` with "
             "`proxy_cache_lock on`; HAProxy: its `cache` (no request coalescing).", "",
             "| peer | requests | backend queries per round | answers | seconds (median) |",
             "|---|---|---|---|---|"]
    for p, rounds in herd.items():
        queries = ", ".join(str(h["backend_queries"]) for h in rounds)
        codes = {}
        for h in rounds:
            for code, n in h["codes"].items():
                codes[code] = codes.get(code, 0) + n
        answers = ", ".join(f"{n}× {code}" for code, n in sorted(codes.items()))
        lines.append(f"| {p} | {rounds[0]['requests']} | {queries} | {answers} | "
                     f"{statistics.median(h['seconds'] for h in rounds):.2f} |")
    return "\n".join(lines)


def latency_table(latency, peers):
    lines = [f"### Latency, open loop at fixed rates ({LATENCY_PATH}, {LATENCY_CONNECTIONS} connections, "
             "`oha --latency-correction`), ms", "",
             "| rate (req/s) | peer | p50 | p99 | p99.9 |", "|---|---|---|---|---|"]
    for rate in sorted(latency, key=int):
        for p in peers:
            if p in latency[rate]:
                x = latency[rate][p]
                lines.append(f"| {rate} | {p} | {x['p50_ms']['median']:.3f} | {x['p99_ms']['median']:.3f} | "
                             f"{x['p999_ms']['median']:.3f} |")
    return "\n".join(lines)


def gnuplot_script(data_file, svg_file, peers):
    """A gnuplot script: latency (log scale) by rate, one line per peer and percentile."""
    plots = []
    for i, p in enumerate(peers):
        for j, (col, label) in enumerate([(3, "p50"), (4, "p99"), (5, "p99.9")]):
            plots.append(f"'{data_file}' using 2:(strcol(1) eq '{p}' ? ${col} : 1/0) with linespoints "
                         f"lc {i + 1} dt {j + 1} title '{p} {label}'")
    return "\n".join([
        "set terminal svg size 900,500 dynamic",
        f"set output '{svg_file}'",
        "set title 'Latency per peer at fixed request rates (open loop, lower is better)'",
        "set xlabel 'requests/s'",
        "set ylabel 'latency (ms)'",
        "set logscale y",
        "set key outside right",
        "set grid",
        "plot " + ", \\\n     ".join(plots),
    ]) + "\n"


def plot_latency(latency, peers, svg_file):
    if not shutil.which("gnuplot"):
        print("loadtest: gnuplot not found; no plot", file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "latency.dat")
        with open(data, "w") as f:
            for rate in sorted(latency, key=int):
                for p in peers:
                    if p in latency[rate]:
                        x = latency[rate][p]
                        f.write(f"{p} {rate} {x['p50_ms']['median']} {x['p99_ms']['median']} {x['p999_ms']['median']}\n")
        script = os.path.join(d, "plot.gp")
        with open(script, "w") as f:
            f.write(gnuplot_script(data, svg_file, peers))
        return subprocess.run(["gnuplot", script], capture_output=True).returncode == 0


def machine_facts():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            model = m.group(1).strip() if m else model
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cores": os.cpu_count(), "cpu": model, "commit": commit or "unknown",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seawall", required=True, help="path to the seawall binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    ap.add_argument("--peers", default="seawall,nginx,haproxy,pingora",
                    help="seawall, nginx, haproxy and pingora (the bare Pingora baseline: plain proxy, TLS and cache hit scenarios)")
    ap.add_argument("--pingora", help="path to the bare_pingora example (default: next to --seawall)")
    ap.add_argument("--no-logs-table", action="store_true", help="skip the second table (access logs on)")
    ap.add_argument("--idle", type=int, default=IDLE_CONNECTIONS, help="idle connections (0: skip)")
    ap.add_argument("--no-latency", dest="latency", action="store_false", help="skip the open-loop latency runs")
    ap.add_argument("--no-throttle", dest="throttle", action="store_false",
                    help=f"skip the throttle accuracy run ({THROTTLE_OVERLOAD}× a {THROTTLE_RATE} req/s plan)")
    ap.add_argument("--no-herd", dest="herd", action="store_false",
                    help=f"skip the thundering herd ({HERD_SIZE} requests at once on a cold key)")
    ap.add_argument("--latency-rates", default=",".join(str(r) for r in LATENCY_RATES))
    ap.add_argument("--latency-duration", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="1 s per scenario, 1 round, at most 200 connections, no logs table")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--command", default="loadtest/run", help="the command line quoted in RESULTS.md")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                    help="another Seawall binary measured as peer NAME in the same run (before/after A/B)")
    args = ap.parse_args(argv)
    alternatives = dict(v.split("=", 1) for v in args.variant)
    args.latency_rates = [int(r) for r in args.latency_rates.split(",") if r]
    if args.latency and not shutil.which("oha"):
        print("loadtest: oha not found (cargo install oha --locked); skipping latency", file=sys.stderr)
        args.latency = False

    wanted = args.scenarios.split(",")
    scenarios = [s for s in SCENARIOS if s.name in wanted]
    if not shutil.which("oha") and any(s.listener == "mtls" for s in scenarios):
        print("loadtest: oha not found; skipping the mTLS scenarios (wrk cannot send a client certificate)",
              file=sys.stderr)
        scenarios = [s for s in scenarios if s.listener != "mtls"]
    peers = args.peers.split(",") + [name for name in alternatives if name not in args.peers.split(",")]
    if "pingora" in peers:
        args.pingora = args.pingora or os.path.join(os.path.dirname(args.seawall), "examples", "bare_pingora")
        if not os.access(args.pingora, os.X_OK):
            print(f"loadtest: no bare Pingora at {args.pingora} (cargo build --release --example bare_pingora);"
                  " measuring without it", file=sys.stderr)
            peers.remove("pingora")
    if args.smoke:
        args.rounds, args.duration, args.no_logs_table, args.latency, args.throttle = 1, 1, True, False, False
        scenarios = [s for s in scenarios if s.connections <= 200]
        args.idle = min(args.idle, 200)
    herd_size = min(HERD_SIZE, 200) if args.smoke else HERD_SIZE

    workdir = tempfile.mkdtemp(prefix="seawall-loadtest-")
    # nginx workers run unprivileged: they must be able to read the 16 KB answer.
    os.chmod(workdir, 0o755)
    with open(os.path.join(workdir, "16k.json"), "w") as f:
        f.write('{"data":"' + "x" * (16 * 1024 - 11) + '"}')
    os.chmod(os.path.join(workdir, "16k.json"), 0o644)
    token = make_jwt(workdir)
    make_tls_material(workdir)
    make_mediations(workdir)
    backend_port = free_port()
    with open(os.path.join(workdir, "backend.conf"), "w") as f:
        f.write(backend_nginx_conf(backend_port, workdir))
    backend = subprocess.Popen(["taskset", "-c", LOAD_CORE, shutil.which("nginx") or "/usr/sbin/nginx",
                                "-c", os.path.join(workdir, "backend.conf"), "-p", workdir,
                                "-e", os.path.join(workdir, "backend-error.log")],
                               start_new_session=True, preexec_fn=raise_nofile)
    report = {"machine": machine_facts(), "command": args.command, "rounds": args.rounds,
              "duration_secs": args.duration, "tables": {}}
    failures = []
    slow = SlowBackend()
    slow.start()
    try:
        wait_port(backend_port)
        variants = [("nologs", False)] + ([] if args.no_logs_table else [("logs", True)])
        for tag, access_log in variants:
            runs = {}
            # The bare Pingora has no access log to switch on, no usage plan and no cache.
            tag_peers = [p for p in peers if not (access_log and p == "pingora")]
            live = make_peers(tag_peers, args.seawall, backend_port, workdir, access_log, alternatives, slow.port,
                              args.pingora)
            for p in live:
                p.start()
            try:
                for rnd in range(args.rounds):
                    for s in scenarios:
                        for p in live:
                            if not runs_scenario(p.name, s):
                                continue
                            r = measure(p, s, args.duration, workdir, token)
                            runs.setdefault(s.name, {}).setdefault(p.name, []).append(r)
                            print(f"[{tag} round {rnd + 1}] {s.name:12} {p.name:8} {r['rps']:10.0f} req/s "
                                  f"{r['cpu_us_per_request']:6.1f} µs/req errors={r['errors']}", flush=True)
                            if r["errors"] or not r["requests"]:
                                failures.append(f"{tag} {s.name} {p.name}: {r['errors']} errors, {r['requests']} requests")
                latency = {}
                if args.latency and tag == "nologs":
                    for rnd in range(args.rounds):
                        for rate in args.latency_rates:
                            for p in live:
                                r = run_oha(p.port, rate, args.latency_duration)
                                latency.setdefault(str(rate), {}).setdefault(p.name, []).append(r)
                                print(f"[latency round {rnd + 1}] {rate:6} req/s {p.name:8} p50 {r['p50_ms']:.3f} ms "
                                      f"p99 {r['p99_ms']:.3f} ms p99.9 {r['p999_ms']:.3f} ms errors={r['errors']}", flush=True)
                                if r["errors"]:
                                    failures.append(f"latency {rate} {p.name}: {r['errors']} errors {r['error_kinds']}")
                throttle = {}
                if args.throttle and tag == "nologs" and shutil.which("oha"):
                    for p in (p for p in live if p.name != "pingora"):
                        throttle[p.name] = throttle_accuracy(p, backend_port)
                        t = throttle[p.name]
                        print(f"[throttle] {p.name:8} offered {t['offered_rps']:.0f} req/s, backend saw "
                              f"{t['backend_rps']:.1f} req/s ({t['accuracy']:.3f} of the plan), "
                              f"{t['cpu_us_per_request']:.1f} µs CPU/request", flush=True)
                herd = {}
                if args.herd and tag == "nologs":
                    for rnd in range(args.rounds):
                        for p in (p for p in live if p.name != "pingora"):
                            h = thundering_herd(p, slow, f"{p.name}-{rnd}", herd_size)
                            herd.setdefault(p.name, []).append(h)
                            print(f"[herd round {rnd + 1}] {p.name:8} {h['requests']} requests at once: "
                                  f"{h['backend_queries']} reached the backend, answers {h['codes']}, "
                                  f"{h['seconds']:.2f} s", flush=True)
                            if p.name == "seawall" and (h["backend_queries"] != 1 or h["errors"]):
                                failures.append(f"herd {p.name}: {h['backend_queries']} backend queries, {h['codes']}")
                idle = {}
                if args.idle and tag == "nologs":
                    # Fresh processes: memory kept from the load above would hide the growth.
                    for p in live:
                        p.stop()
                        p.start()
                    for p in live:
                        idle[p.name] = idle_connections(p, args.idle)
                        print(f"[idle] {p.name:8} {idle[p.name]['kb_per_1000']:.0f} kB per 1000 idle connections", flush=True)
            finally:
                for p in live:
                    p.stop()
            summary = {}
            for sname, by_peer in runs.items():
                summary[sname] = {}
                for pname, rs in by_peer.items():
                    summary[sname][pname] = {
                        "rps": summarize([r["rps"] for r in rs]),
                        "cpu_us_per_request": summarize([r["cpu_us_per_request"] for r in rs]),
                        "peak_rss_kb": max(r["peak_rss_kb"] for r in rs),
                        "errors": sum(r["errors"] for r in rs),
                    }
            lat_summary = {
                rate: {pname: {k: summarize([r[k] for r in rs]) for k in ("p50_ms", "p99_ms", "p999_ms")}
                       for pname, rs in by_peer.items()}
                for rate, by_peer in latency.items()
            }
            report["tables"][tag] = {"scenarios": summary, "idle": idle, "latency": lat_summary, "throttle": throttle,
                                     "herd": herd}
    finally:
        slow.stop()
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait(timeout=10)

    write_report(report, scenarios, peers, args.out, args.smoke)
    shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print("errors:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def write_report(report, scenarios, peers, out, smoke):
    os.makedirs(out, exist_ok=True)
    name = "results-smoke.json" if smoke else "results.json"
    with open(os.path.join(out, name), "w") as f:
        json.dump(report, f, indent=2)
    m = report["machine"]
    parts = [
        "# Load test results", "",
        f"- date: {m['date']}; commit: {m['commit']}; machine: {m['cores']} cores, {m['cpu']}",
        f"- command: `{report['command']}`; {report['rounds']} alternating rounds of {report['duration_secs']} s per scenario and peer; medians with (min–max)",
        "- proxies pinned to core 0, one worker/thread each; backend (nginx `return 200`) and wrk (`-t1`) on core 1",
        "",
    ]
    titles = {"nologs": "Access logs off (headline)", "logs": "Access logs on"}
    for tag, t in report["tables"].items():
        parts.append(table(t["scenarios"], scenarios, peers, titles[tag]))
        parts.append("")
        mediations = mediation_table(t["scenarios"], scenarios)
        if mediations:
            parts.append(mediations)
            parts.append("")
        if t.get("latency"):
            parts.append(latency_table(t["latency"], peers))
            parts.append("")
            if not smoke and plot_latency(t["latency"], peers, os.path.join(out, "latency.svg")):
                parts.append("![latency percentiles per peer and rate](latency.svg)")
                parts.append("")
        if t.get("throttle"):
            parts.append(f"Throttle accuracy: a usage plan of {THROTTLE_RATE} req/s (burst {THROTTLE_RATE}) offered "
                         f"{THROTTLE_OVERLOAD}× that, open loop, for {THROTTLE_SECS} s (nginx `limit_req` burst "
                         f"{THROTTLE_RATE} nodelay; HAProxy `sc_http_req_rate` over 1 s).")
            parts.append("")
            parts.append("| peer | offered req/s | backend saw req/s | vs the plan | ceiling (rate + burst over the run) | CPU µs/request |")
            parts.append("|---|---|---|---|---|---|")
            for p, v in t["throttle"].items():
                parts.append(f"| {p} | {v['offered_rps']:.0f} | {v['backend_rps']:.1f} | {v['accuracy']:.3f}× | "
                             f"{v['ceiling']:.1f} | {v['cpu_us_per_request']:.1f} |")
            parts.append("")
        if t.get("herd"):
            parts.append(herd_table(t["herd"]))
            parts.append("")
        if t.get("idle"):
            parts.append("| idle keep-alive connections | peer | RSS growth per 1000 connections (kB) |")
            parts.append("|---|---|---|")
            for p, v in t["idle"].items():
                parts.append(f"| {v['connections']} | {p} | {v['kb_per_1000']:.0f} |")
            parts.append("")
    text = "\n".join(parts) + "\n"
    print(text)
    if not smoke:
        with open(os.path.join(out, "RESULTS.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
