#!/usr/bin/env python3
"""The scripted client session the 2026-02-notifications corpus is recorded from.

Three users of the mobile app sign up (route `auth`), chat (route `chat`: the messages create
the in-app notifications) — both recorded as the corpus's setup requests — and use
`/notifications` through the strangler proxy (route `notification` in shadow mode): devices
registered, moved to another user and removed, the in-app list with pagination, the unread count,
reading one and all, and the mistakes clients make (bad bodies and queries, ids that are not
theirs or not ids, no token, the wrong method, conditional GETs). One request at a time, waiting
after each until the proxy has recorded it, so the corpus keeps the session's order. Nothing here
states an expected answer: the monolith's answers at replay time are the expectations.

Usage: session.py PROXY_URL ADMIN_URL   (scripts/record-corpus runs it)
"""
import os, secrets, sys, uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recorder import Session

PASSWORD = "corpus-password-1"  # = [fill] password in parity.toml
DEVICE = "corpus-device-1"  # = [fill] token: the recorder redacts fields named token
session = Session(sys.argv[1], sys.argv[2], ("auth", "chat", "notification"))
call = session.call


def gql(token, query, variables=None):
    return call("POST", "/graphql", {"query": query, "variables": variables or {}}, token)[1]


def user(name):
    email = f"corpus.{name.lower()}.{secrets.token_hex(4)}@example.test"
    _, b = call("POST", "/auth/register", {"email": email, "password": PASSWORD, "displayName": name})
    return b["accessToken"], b["user"]["id"]


def chat(token, members, title=None):
    i = {"memberIds": members, **({"title": title} if title else {})}
    return gql(token, "mutation Create($input: CreateChatInput!) { createChat(input: $input) { id } }", {"input": i})["data"]["createChat"]["id"]


def send(token, chat_id, body):
    q = "mutation Send($input: SendMessageInput!) { sendMessage(input: $input) { id } }"
    return gql(token, q, {"input": {"chatId": chat_id, "body": body, "clientMessageId": str(uuid.uuid4())}})


ann, ann_id = user("Ann")
ben, ben_id = user("Ben")
cat, cat_id = user("Cat")

# a new user: nothing yet
call("GET", "/notifications", token=ben)
call("GET", "/notifications/unread-count", token=ben)

# devices: register, register again (an upsert), the same token from another user (it moves)
call("POST", "/notifications/devices", {"token": DEVICE, "platform": "android"}, ben)
call("POST", "/notifications/devices", {"token": DEVICE, "platform": "ios"}, ben)
call("POST", "/notifications/devices", {"token": DEVICE, "platform": "web"}, cat)
# every problem at once, unknown properties first; not JSON; no body
call("POST", "/notifications/devices", {}, ben)
call("POST", "/notifications/devices", {"token": "", "platform": "pc"}, ben)
call("POST", "/notifications/devices", {"token": 5, "platform": None, "model": "Pixel", "os": 14}, ben)
call("POST", "/notifications/devices", {"token": "x" * 4097, "platform": "ios"}, ben)
call("POST", "/notifications/devices", raw='{"token": "x", "platform": ', token=ben)
call("POST", "/notifications/devices", raw="[]", token=ben)
# removing: someone else's token now (404), the owner's (204), gone (404), an escaped name
call("DELETE", f"/notifications/devices/{DEVICE}", token=ben)
call("DELETE", f"/notifications/devices/{DEVICE.upper()}", token=cat)  # routes match any case, tokens do not
call("DELETE", f"/notifications/devices/{DEVICE}", token=cat)
call("DELETE", f"/notifications/devices/{DEVICE}", token=cat)
call("DELETE", "/notifications/devices/a%2Fb%20c", token=cat)

# no token, a bad one; a route or method that does not exist
call("GET", "/notifications")
call("GET", "/notifications/unread-count", token="not-a-token")
call("POST", "/notifications/read-all", token=ann[:-4] + "abcd")
call("GET", "/notifications/devices", token=ben)
call("PUT", "/notifications", token=ben)
call("DELETE", "/notifications/devices/", token=ben)

# messages make notifications: a direct chat and a group, a long body (the preview is cut)
direct = chat(ann, [ben_id])
group = chat(ann, [ben_id, cat_id], "Weekend plans")
send(ann, direct, "Hi Ben")
send(ann, group, "Who is in for Saturday?")
send(ann, direct, "A long one: " + "lorem ipsum dolor sit amet " * 6)
send(cat, group, "Me! 🚲")
send(ann, direct, "Last one")

# the list, newest first; pages; every kind of bad query
_, page = call("GET", "/notifications", token=ben)
call("GET", "/notifications", token=ben, headers={"if-none-match": session.last_headers["etag"]})
_, first = call("GET", "/notifications?limit=2", token=ben)
call("GET", f"/notifications?limit=2&before={first['nextBefore']}", token=ben)
call("GET", f"/notifications?before={page['items'][-1]['id']}", token=ben)
call("GET", "/notifications?limit=100", token=ben)
for q in ["limit=0", "limit=abc", "limit=101", "limit=1.5", "limit=", "limit=%201%20", "limit=0x2", "limit=1&limit=2",
          "before=not-a-uuid", f"before={uuid.uuid4()}", "color=red&limit=2", "limit=-1&before=x"]:
    call("GET", "/notifications?" + q, token=ben)
_, cats = call("GET", "/notifications", token=cat)
call("GET", f"/notifications?before={cats['items'][0]['id']}", token=ben)
call("GET", "/notifications", token=ann)

# the unread count; reading one (twice: the first read time is kept), bad and foreign ids
call("GET", "/notifications/unread-count", token=ben)
call("GET", "/notifications/unread-count", token=ben, headers={"if-none-match": session.last_headers["etag"]})
newest = page["items"][0]["id"]
call("POST", f"/notifications/{newest}/read", token=ben)
call("POST", f"/notifications/{newest}/read", token=ben)
call("POST", f"/notifications/{newest.upper()}/read", token=ben)
call("POST", f"/notifications/{newest}/read", token=cat)
call("POST", f"/notifications/{uuid.uuid4()}/read", token=ben)
call("POST", "/notifications/not-a-uuid/read", token=ben)
call("POST", "/notifications/12345678-1234-1234-1234-12345678901g/read", token=ben)
call("GET", f"/notifications/{newest}/read", token=ben)
call("GET", "/notifications/unread-count", token=ben)
call("GET", "/notifications?limit=1", token=ben)

# read-all: what was unread, then nothing; Express's routing below the route's prefix (which the
# proxy matches as written): any case, a trailing slash
call("POST", "/notifications/read-all", token=ben)
call("POST", "/notifications/read-all", token=ben)
call("POST", "/notifications/Read-All/", token=cat)
call("GET", "/notifications/UNREAD-COUNT", token=ben)
call("GET", "/notifications/", token=cat)
call("POST", "/notifications/read-all", {"unexpected": True}, ann)
print(f"{session.sent} requests", file=sys.stderr)
