#!/usr/bin/env python3
"""Checks that every query of the Grafana dashboard returns series from a real Prometheus, so no
panel is left with a typo'd metric or label name.

Every panel target's `expr`, every annotation's and every `label_values(...)` variable is sent
to Prometheus with Grafana's variables put in (`$__rate_interval` → 1m, a variable → its "All"
value). A query passes when it returns at least one series. A query that returns nothing fails,
except when each metric it names that Prometheus has never seen is in EVENT_ONLY (metrics that
exist only after an event a short load does not cause) and is spelt as its exporter spells it in
the source; those are reported as "not exercised".

Two ways to run it:

  check_dashboard.py --prometheus http://127.0.0.1:9090
      against a Prometheus that already scrapes a stack (scripts/dev-up's); a metric it has
      not seen yet passes if its exporter spells it so (a typo check only)

  check_dashboard.py --stack --legacy URL --auth URL --chat URL --notification URL
      what scripts/check-dashboard runs inside scripts/test: starts the proxy (`--strangler`,
      on port 0) in front of these services with a route table of its own, drives a short load
      through it (sign-ups, logins, refreshes, chat GraphQL, notifications, a route whose
      upstream is gone so its breaker opens, one whose upstream answers 500 so its canary is
      demoted, a malformed request, a WebSocket, a broken reload) while a Prometheus with
      deploy/prometheus's rules starts scraping the proxy and the services, waits until every
      target has been scraped twice after the load, checks the dashboard, and stops what it
      started.
"""
import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Grafana's built-in variables, as a short range around "now" would set them.
BUILTINS = {"__rate_interval": "1m", "__interval": "10s", "__range": "5m", "__range_s": "300"}

# Metrics a short load does not bring into being, and why. Only accepted when Prometheus has
# never seen the name and the name is in the exporters' source as written here.
EVENT_ONLY = {
    "strangler_responses_aborted_total": "an upstream failing after its response head was sent",
    "strangler_shadow_store_errors_total": "the comparison store failing",
    "dry_run_rejected_total": "a dry-run header with a bad signature",
    "auth_mail_failures_total": "the mail API failing",
    "chat_bus_errors_total": "Redis failing under the messageAdded bus",
    "chat_bus_subscriber_lagged_total": "a subscriber too slow for the bus",
    "chat_inbox_events_total": "the inbox projection's partitions (its consumer group, chat-inbox, is shared with every chat service on the broker, a developer's dev stack included)",
    "chat_inbox_rows_written_total": "a chat placed on a shard (the gate's chats are on the monolith's tables)",
    "chat_inbox_errors_total": "the inbox projection failing to write",
    "chat_inbox_consumer_errors_total": "the inbox projection failing to consume",
    "chat_inbox_consumer_lag": "the inbox projection holding partitions (its consumer group, chat-inbox, is shared with every chat service on the broker) and librdkafka's first statistics (1 s)",
    "chat_writes_paused_total": "a chat data move at its write fence",
    "chat_writes_rerouted_total": "a chat moved under a write",
    "chat_pushes_total": "the chat service sending pushes itself",
    "notification_pushes_total": "the push job owning pushes (it runs in shadow in the test stack)",
    "notification_push_delay_seconds_bucket": "the push job owning pushes",
    "notification_dead_letters_total": "an event the push job gives up on",
    "outbox_pending_events": "a service's relay leading the outbox (the monolith may hold the lock)",
    "outbox_events_published_total": "a service's relay leading the outbox",
    "outbox_publish_failures_total": "a service's relay failing to publish",
    "outbox_publish_delay_seconds_bucket": "a service's relay leading the outbox",
}

# Metrics the load brings into being off the request path, some time after its answers: shadow
# comparisons and their dry-run copies, the messageAdded publish, the push job's consumer (in a
# consumer group of its own in the test stack, so it sees every event). Waited for.
ASYNC = [
    "strangler_shadow_comparisons_total",
    "dry_run_requests_total",
    "chat_bus_published_total",
    "notification_events_total",
    "notification_shadow_comparisons_total",
    "notification_consumer_lag",
    "notification_assigned_partitions",
]

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}


# ---- the dashboard's queries -------------------------------------------------------------


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def variable_values(dash):
    """Each template variable's "All" value (a regex matching every value)."""
    values = dict(BUILTINS)
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "datasource":
            continue
        values[v["name"]] = v.get("allValue") or ".*"
    return values


def substitute(expr, values):
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise ValueError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def queries(dash):
    """(where, PromQL) for every query the dashboard sends."""
    values = variable_values(dash)
    out = []
    for p in all_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p['title']!r} {t.get('refId', '')}".rstrip(), substitute(t["expr"], values)))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", substitute(a["expr"], values)))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") != "query" or not q:
            continue
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q)
        if not m:
            raise ValueError(f"variable ${v['name']}: only label_values(metric, label) is checked, got {q!r}")
        # the series carrying the label: what Grafana lists the values of
        out.append((f"variable ${v['name']}", f"count by ({m.group(2)}) ({substitute(m.group(1), values)})"))
    return out


def metric_names(expr):
    """The metric names a PromQL expression reads."""
    names = set()
    for m in re.finditer(r'__name__\s*=~?\s*"([^"]*)"', expr):
        names.update(n for n in m.group(1).split("|") if n)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        if m.group(2) or m.group(1).lower() in PROMQL_WORDS:
            continue  # a function, or a keyword
        names.add(m.group(1))
    return names


def in_source(name):
    """Whether an exporter spells this metric (a histogram by its base name) in the source."""
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    needle = f'"{base}"'
    for top in ("proxy/src", "extracted"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".rs"):
                    with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                        if needle in fh.read():
                            return True
    return False


# ---- Prometheus ------------------------------------------------------------------------


def http(method, url, body=None, headers=None, timeout=10):
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def promql(prom, query):
    status, body = http("GET", f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        raise RuntimeError(f"query failed ({status}): {query}\n  {body}")
    return body["data"]["result"]


def check(prom, dashboard, strict):
    with open(dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    status, body = http("GET", f"{prom}/api/v1/label/__name__/values")
    if status != 200:
        raise RuntimeError(f"cannot list metric names ({status}): {body}")
    known = set(body["data"])
    failures, unexercised, checked = [], [], 0
    for where, q in queries(dash):
        checked += 1
        try:
            result = promql(prom, q)
        except RuntimeError as e:
            failures.append(f"{where}: {e}")
            continue
        if result:
            continue
        names = metric_names(q)
        unseen = sorted(n for n in names if n not in known)
        if not unseen:
            failures.append(f"{where}: every metric it reads exists ({', '.join(sorted(names))}) but it returns nothing: a label or an operator is wrong\n    {q}")
        elif all((n in EVENT_ONLY or not strict) and in_source(n) for n in unseen):
            why = {n: EVENT_ONLY.get(n, "not seen by this Prometheus yet") for n in unseen}
            unexercised.append(f"{where}: {', '.join(f'{n} ({w})' for n, w in why.items())}")
        else:
            bad = [n for n in unseen if (n not in EVENT_ONLY and strict) or not in_source(n)]
            failures.append(f"{where}: no such metric: {', '.join(bad)}\n    {q}")
    print(f"dashboard {os.path.relpath(dashboard, ROOT)}: {checked} queries against {prom}")
    for u in unexercised:
        print(f"  not exercised by this load: {u}")
    for f in failures:
        print(f"  FAILED {f}")
    if not failures:
        print(f"  every query returned series ({checked - len(unexercised)}) or reads only event-only metrics ({len(unexercised)})")
    return not failures


# ---- the stack: proxy, load, Prometheus --------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_port(url):
    u = urllib.parse.urlsplit(url)
    return f"{u.hostname}:{u.port}"


def wait_for(what, ok, proc=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({proc.returncode})")
        try:
            if ok():
                return
        except (OSError, RuntimeError, ValueError):
            pass
        time.sleep(0.1)  # polling a condition, not waiting a guessed time
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def routes_toml(args, gone_port, failing_url, store):
    schema = os.path.join(ROOT, "docs/api/chat.graphql")
    return f"""# the dashboard check's route table (deploy/grafana/check_dashboard.py)
[server]
default_upstream = "legacy"
threads = 1
grace_period_secs = 0
shutdown_timeout_secs = 1

[[listeners]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[shadow]
store_dir = "{store}"

[graphql]
schema = "{schema}"

[upstreams.legacy]
url = "{args.legacy}"
health = "/health"

[upstreams.auth]
url = "{args.auth}"
health = "/health"

[upstreams.chat]
url = "{args.chat}"
health = "/health"
dry_run = true

[upstreams.notification]
url = "{args.notification}"
health = "/health"
dry_run = true

# nothing listens here: the route's breaker opens and its canary is demoted
[upstreams.gone]
url = "http://127.0.0.1:{gone_port}"
health = "/health"

[[routes]]
name = "auth"
match = {{ path_prefix = "/auth" }}
target = "auth"
mode = "extracted"
fallback = true
shadow = {{ reverse = true, types = {{ "$.accessToken" = "string", "$.refreshToken" = "string" }} }}

[[routes]]
name = "chat"
match = {{ path = "/graphql", graphql_fields = ["chats", "chat", "messages", "createChat", "sendMessage", "editMessage", "deleteMessage", "markRead", "messageAdded"] }}
target = "chat"
mode = "extracted"
shadow = {{ reverse = true }}

[[routes]]
name = "notification"
match = {{ path_prefix = "/notifications" }}
target = "notification"
mode = "shadow"
shadow = {{ writes = "dry-run" }}

[[routes]]
name = "gone"
match = {{ path_prefix = "/_gone" }}
target = "gone"
mode = "canary"
percent = 100
breaker = {{ failures = 1, cooldown_secs = 60 }}

# an upstream answering 500: the canary is demoted to shadow
[upstreams.failing]
url = "{failing_url}"

[[routes]]
name = "failing"
match = {{ path_prefix = "/_failing" }}
target = "failing"
mode = "canary"
percent = 100
demote = {{ max_error_percent = 1, min_requests = 1, window_secs = 60 }}
"""


class Client:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, token=None, expect=None):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        status, answer = http(method, self.base + path, body, headers)
        if expect is not None and status not in expect:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return status, answer

    def gql(self, token, query, variables=None):
        """The answer. Errors in it are the services' business here (a load, not a test of
        them): a user on one side may not see a chat the other side placed on a shard."""
        _, answer = self.call("POST", "/graphql", {"query": query, "variables": variables or {}}, token, expect=(200,))
        if not isinstance(answer, dict):
            raise RuntimeError(f"graphql: {answer}")
        return answer


def raw_exchange(addr, data):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        return s.recv(4096)


def websocket_session(addr, token):
    """A graphql-transport-ws connection on the chat service: upgrade, init, ack, close."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        s.sendall(
            (
                f"GET /graphql HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("websocket: closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"websocket: {head[:200]!r}")
        payload = json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}).encode()
        if len(payload) > 125:
            head_len = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
        else:
            head_len = bytes([0x81, 0x80 | len(payload)])
        mask = secrets.token_bytes(4)
        s.sendall(head_len + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        # the server's first frame: connection_ack (a text frame) once the socket is served
        frame = head.split(b"\r\n\r\n", 1)[1]
        while len(frame) < 2 or len(frame) < 2 + (frame[1] & 0x7F):
            chunk = s.recv(4096)
            if not chunk:
                break
            frame += chunk
        if b"connection_ack" not in frame:
            raise RuntimeError(f"websocket: no connection_ack ({frame[:200]!r})")
        s.sendall(bytes([0x88, 0x80]) + secrets.token_bytes(4))  # close


def drive_load(proxy, admin, args, config_path):
    """A short, varied load; what each step brings into being is said beside it."""
    c = Client(f"http://{proxy}")
    password = "dashboard-password-1"
    users = []
    for i in range(3):  # auth_registrations_total; chat and notification need users
        email = f"dashboard.{i}.{secrets.token_hex(4)}@example.test"
        _, pair = c.call("POST", "/auth/register", {"email": email, "password": password, "displayName": f"Dash {i}"}, expect=(201,))
        users.append({"email": email, "token": pair["accessToken"], "refresh": pair["refreshToken"], "id": pair["user"]["id"]})
    for u in users:
        c.call("POST", "/auth/login", {"email": u["email"], "password": password}, expect=(200,))  # auth_logins_total
        c.call("POST", "/auth/login", {"email": u["email"], "password": "wrong-password"}, expect=(401,))
        _, pair = c.call("POST", "/auth/refresh", {"refreshToken": u["refresh"]}, expect=(200, 201))  # auth_refreshes_total
        c.call("POST", "/auth/refresh", {"refreshToken": u["refresh"]}, expect=(401,))  # reuse detected
        u["token"] = pair["accessToken"]
        for _ in range(2):
            c.call("GET", "/auth/me", token=u["token"], expect=(200,))  # compared with the monolith (reverse shadow)
    # chat: the service answers (chat_bus_published_total), reads compared with the monolith,
    # writes not copied (strangler_shadow_dropped_total{reason="unsafe_method"})
    a, b, d = users
    created = c.gql(a["token"], "mutation C($input: CreateChatInput!) { createChat(input: $input) { id } }", {"input": {"memberIds": [b["id"], d["id"]], "title": "dashboard"}})
    # (on a stack whose chats are moving to shards the monolith refuses chats in a moved bucket:
    # then there is nothing to send to, and the load goes on)
    chat = ((created.get("data") or {}).get("createChat") or {}).get("id")
    for u in users:
        c.gql(u["token"], "query { chats { id title } }")
        for n in range(2 if chat else 0):
            c.gql(u["token"], "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { id } }", {"input": {"chatId": chat, "body": f"hello {n}", "clientMessageId": f"{u['id']}-{n}"}})
        if chat:
            c.gql(u["token"], "query M($id: ID!) { messages(chatId: $id, first: 5) { edges { node { id } } } }", {"id": chat})
        # notification: in shadow, the monolith answers, copies go to the service (writes as dry
        # runs: dry_run_requests_total)
        c.call("POST", "/notifications/devices", {"token": f"dashboard-{u['id']}", "platform": "web"}, u["token"], expect=(201,))
        for _ in range(2):
            c.call("GET", "/notifications", token=u["token"], expect=(200,))
            c.call("GET", "/notifications/unread-count", token=u["token"], expect=(200,))
    c.call("POST", "/graphql", {"query": "{ __typename }"})  # no route claims it: the monolith
    for _ in range(3):
        c.call("GET", "/health", expect=(200,))  # the default route
    for _ in range(3):
        c.call("GET", "/_gone/ping")  # refused: the breaker opens, the monolith answers (fallbacks)
    for _ in range(3):
        c.call("GET", "/_failing/ping")  # a 500: the canary is demoted to shadow
    answer = raw_exchange(proxy, b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n")  # strangler_requests_refused_total
    if not answer.startswith(b"HTTP/1.1 400"):
        raise RuntimeError(f"a malformed request was not refused: {answer[:100]!r}")
    websocket_session(host_port(args.chat), a["token"])  # chat_websockets_open
    # a broken file: the reload fails, the old table keeps serving, strangler_config_in_sync = 0
    with open(config_path, "a", encoding="utf-8") as f:
        f.write("\n[[routes]]\nname = \n")
    status, answer = http("POST", f"http://{admin}/reload")
    if status != 422:
        raise RuntimeError(f"a broken reload answered {status}: {answer}")


class Failing(BaseHTTPRequestHandler):
    """An upstream that answers every request with a 500."""

    def do_GET(self):
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_):
        pass


def run_stack(args):
    work = tempfile.mkdtemp(prefix="dashboard-check-", dir=args.work_dir)
    procs = []
    ok = False
    failing = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    try:
        config = os.path.join(work, "routes.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(routes_toml(args, free_port(), f"http://127.0.0.1:{failing.server_address[1]}", os.path.join(work, "shadow-store")))
        bound = os.path.join(work, "bound.json")
        env = dict(os.environ, STRANGLER_LOG="warn")
        proxy_log = open(os.path.join(work, "strangler.log"), "wb")
        strangler = subprocess.Popen([args.strangler, "serve", "--config", config, "--bound-addrs-file", bound], stdout=proxy_log, stderr=subprocess.STDOUT, env=env)
        procs.append(("strangler", strangler, proxy_log.name))
        wait_for("the proxy's bound addresses", lambda: os.path.getsize(bound) > 0, strangler)
        with open(bound, encoding="utf-8") as f:
            addrs = json.load(f)
        proxy, admin = addrs["listeners"][0], addrs["admin"]
        wait_for("the proxy ready", lambda: http("GET", f"http://{admin}/readyz")[0] == 200, strangler)

        # Prometheus first: it applies its targets only some seconds after it starts, meanwhile the load runs
        started = time.monotonic()
        prom_port = free_port()
        prom_config = os.path.join(work, "prometheus.yml")
        jobs = {"strangler": admin, "auth": host_port(args.auth), "chat": host_port(args.chat), "notification": host_port(args.notification)}
        with open(prom_config, "w", encoding="utf-8") as f:
            f.write("global: { scrape_interval: 1s, evaluation_interval: 1s }\n")
            f.write(f"rule_files: [{json.dumps(os.path.join(ROOT, 'deploy/prometheus/rules/*.yml'))}]\n")
            f.write("scrape_configs:\n")
            for job, target in jobs.items():
                f.write(f"  - job_name: {job}\n    static_configs: [{{ targets: [{json.dumps(target)}] }}]\n")
        prom_log = open(os.path.join(work, "prometheus.log"), "wb")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={prom_config}", f"--web.listen-address=127.0.0.1:{prom_port}", f"--storage.tsdb.path={os.path.join(work, 'data')}", "--log.level=warn"],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(("prometheus", prometheus, prom_log.name))
        prom = f"http://127.0.0.1:{prom_port}"

        drive_load(proxy, admin, args, config)
        loaded, loaded_wall = time.monotonic(), time.time()
        wait_for("Prometheus ready", lambda: http("GET", f"{prom}/-/ready")[0] == 200, prometheus)

        # two scrapes of every target after the load, all up: whatever the load made is in two
        # samples (rate() has its two points)
        def scraped():
            since = int(time.time() - loaded_wall)  # a window that starts after the load ended
            if since < 1:
                return False
            got = {r["metric"]["job"]: float(r["value"][1]) for r in promql(prom, f"min by (job) (count_over_time(up[{since}s]))")}
            up = {r["metric"]["job"]: float(r["value"][1]) for r in promql(prom, "min by (job) (up)")}
            return all(got.get(j, 0) >= 2 and up.get(j) == 1 for j in jobs)

        try:
            wait_for("two scrapes of every target after the load", scraped, prometheus)
        except RuntimeError:
            _, targets = http("GET", f"{prom}/api/v1/targets")
            for t in (targets or {}).get("data", {}).get("activeTargets", []):
                print(f"  target {t['labels']['job']} {t['scrapeUrl']}: {t['health']} {t['lastError']}", file=sys.stderr)
            raise

        def consumed():
            _, names = http("GET", f"{prom}/api/v1/label/__name__/values")
            return set(ASYNC) <= set(names["data"])

        wait_for(f"the metrics made off the request path ({', '.join(ASYNC)})", consumed, prometheus)
        scraped_at = time.monotonic()
        print(f"load through the proxy {loaded - started:.1f} s; then until two scrapes of every target and the metrics made off the request path {scraped_at - loaded:.1f} s")
        ok = check(prom, args.dashboard, strict=True)
        return ok
    finally:
        for name, p, log in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if not ok:
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-3000:]
                if tail.strip():
                    print(f"--- {name} log (last lines) ---\n{tail}", file=sys.stderr)
        failing.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dashboard", default=os.path.join(ROOT, "deploy/grafana/dashboard.json"))
    ap.add_argument("--prometheus", help="check against this running Prometheus")
    ap.add_argument("--stack", action="store_true", help="start a proxy and a Prometheus in front of the services below")
    ap.add_argument("--strangler", default=os.path.join(ROOT, "target/debug/strangler"))
    ap.add_argument("--legacy")
    ap.add_argument("--auth")
    ap.add_argument("--chat")
    ap.add_argument("--notification")
    ap.add_argument("--work-dir", default=None, help="where the temporary files go")
    args = ap.parse_args()
    try:
        if args.prometheus:
            ok = check(args.prometheus.rstrip("/"), args.dashboard, strict=False)
        elif args.stack:
            missing = [n for n in ("legacy", "auth", "chat", "notification") if not getattr(args, n)]
            if missing:
                ap.error("--stack needs " + ", ".join(f"--{n}" for n in missing))
            ok = run_stack(args)
        else:
            ap.error("give --prometheus URL or --stack")
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
