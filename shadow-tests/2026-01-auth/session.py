#!/usr/bin/env python3
"""The scripted client session the 2026-01-auth corpus is recorded from.

It plays a client of the auth API through the strangler proxy (route `auth` in shadow mode, so
the proxy records every request), one request at a time, and waits after each until the proxy
has recorded its comparison, so the corpus keeps the session's order. Nothing here states an
expected answer: the monolith's answers at replay time are the expectations.

Usage: session.py PROXY_URL ADMIN_URL   (scripts/record-corpus runs it)
"""
import base64, hashlib, hmac, os, secrets, struct, sys, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recorder import Session

PASSWORD = "corpus-password-1"  # = [fill] password in parity.toml
session = Session(sys.argv[1], sys.argv[2], ("auth",))
call = session.call


def totp(secret_b32):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    digest = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
    o = digest[-1] & 15
    return "%06d" % ((struct.unpack(">I", digest[o : o + 4])[0] & 0x7FFFFFFF) % 1_000_000)


email = f"corpus.{secrets.token_hex(4)}@example.test"

# sign-up, with the mistakes clients make
call("POST", "/auth/register", {"email": email, "password": PASSWORD, "displayName": " Corpus User "})
call("POST", "/auth/register", {"email": email.upper(), "password": PASSWORD, "displayName": "Again"})
call("POST", "/auth/register", {})
call("POST", "/auth/register", {"email": "not-an-email", "password": PASSWORD, "displayName": "x", "role": "admin"})
call("POST", "/auth/register", raw="null")

# sign-in and the session's tokens
call("POST", "/auth/login", {"email": f"nobody.{secrets.token_hex(4)}@example.test", "password": PASSWORD})
call("POST", "/auth/login", {"email": email})
_, pair = call("POST", "/auth/login", {"email": f"  {email.upper()} ", "password": PASSWORD})
call("GET", "/auth/me", token=pair["accessToken"])
call("GET", "/auth/me")
call("GET", "/auth/me", token="not-a-jwt")
_, pair2 = call("POST", "/auth/refresh", {"refreshToken": pair["refreshToken"]})
call("GET", "/auth/me", token=pair2["accessToken"])
call("POST", "/auth/refresh", {"refreshToken": pair["refreshToken"]})  # reuse: the family is revoked
call("POST", "/auth/refresh", {"refreshToken": pair2["refreshToken"]})  # ... so this one is dead too
call("POST", "/auth/refresh", {})

# two-factor authentication
_, pair3 = call("POST", "/auth/login", {"email": email, "password": PASSWORD})
tok = pair3["accessToken"]
call("POST", "/auth/2fa/enable", {"code": "123456"}, token=tok)  # setup not started
_, setup = call("POST", "/auth/2fa/setup", token=tok)
call("POST", "/auth/2fa/enable", {"code": totp(setup["secret"])}, token=tok)
call("POST", "/auth/2fa/setup", token=tok)  # already enabled
call("POST", "/auth/2fa/enable", {"code": totp(setup["secret"])}, token=tok)
_, challenge = call("POST", "/auth/login", {"email": email, "password": PASSWORD})
# (no wrong-code attempt here: codes are redacted and replay fills in the right one, so a wrong
# code would be replayed as a right one; legacy/test covers wrong codes on both sides)
_, pair4 = call("POST", "/auth/2fa/verify", {"challengeToken": challenge["challengeToken"], "code": totp(setup["secret"])})
call("POST", "/auth/2fa/verify", {"challengeToken": challenge["challengeToken"], "code": totp(setup["secret"])})  # single use
call("GET", "/auth/me", token=pair4["accessToken"])
call("POST", "/auth/2fa/disable", {"code": totp(setup["secret"])}, token=pair4["accessToken"])
call("POST", "/auth/2fa/disable", {"code": totp(setup["secret"])}, token=pair4["accessToken"])

# Google sign-in starts with a redirect (state is random: learned as noise)
call("GET", "/auth/google")
call("GET", "/auth/google?login_hint=" + email)
call("GET", "/auth/google/callback?code=4/forged&state=forged")

# password reset: the same answer for every address
call("POST", "/auth/password/forgot", {"email": email})
call("POST", "/auth/password/forgot", {"email": f"nobody.{secrets.token_hex(4)}@example.test"})
call("POST", "/auth/password/forgot", {"email": "nope"})
call("POST", "/auth/password/reset", {"token": "not-a-reset-token-at-all-0000000000", "password": PASSWORD})

# sign-out
call("POST", "/auth/logout", {"refreshToken": pair4["refreshToken"]})
call("POST", "/auth/refresh", {"refreshToken": pair4["refreshToken"]})
call("POST", "/auth/logout", {"refreshToken": pair4["refreshToken"]})
call("GET", "/auth/unknown")
call("DELETE", "/auth/login")
print(f"session done: {session.sent} requests", file=sys.stderr)
