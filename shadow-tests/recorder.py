"""What every corpus session (shadow-tests/*/session.py) does to be recorded in order.

A session plays a client through the strangler proxy with its routes in shadow mode, one request
at a time, and after each waits until the proxy has recorded it (the admin API's `/shadow`
counts), so the corpus keeps the session's order. Redirects are not followed: the client sees
them as answers, as the corpus records them.
"""
import json, sys, time, urllib.error, urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


class Session:
    def __init__(self, proxy, admin, routes):
        self.proxy, self.admin, self.routes = proxy.rstrip("/"), admin.rstrip("/"), tuple(routes)
        self.sent = 0
        self.last_headers = None  # the last answer's headers
        self._opener = urllib.request.build_opener(_NoRedirect)

    def recorded(self):
        with urllib.request.urlopen(self.admin + "/shadow") as r:
            s = json.load(r)
        routes = s.get("routes", {})
        return sum(r.get("compared", 0) + sum(r.get("dropped", {}).values()) for name, r in routes.items() if name in self.routes)

    def call(self, method, path, body=None, token=None, raw=None, headers=None):
        """Sends one request and waits until it is recorded: (status, JSON body or text)."""
        data = raw.encode() if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.proxy + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if token:
            req.add_header("authorization", "Bearer " + token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            r = self._opener.open(req)
        except urllib.error.HTTPError as e:
            r = e
        text = r.read().decode()
        self.sent += 1
        deadline = time.time() + 10
        while self.recorded() < self.sent:
            if time.time() > deadline:
                sys.exit(f"the proxy did not record request {self.sent} ({method} {path}) within 10 s")
            time.sleep(0.02)
        print(f"{r.status} {method} {path} {text[:120]}", file=sys.stderr)
        self.last_headers = r.headers
        try:
            return r.status, (json.loads(text) if text else None)
        except ValueError:
            return r.status, text
