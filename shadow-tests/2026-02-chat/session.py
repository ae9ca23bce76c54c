#!/usr/bin/env python3
"""The scripted client session the 2026-02-chat corpus is recorded from.

Three users of the mobile app sign up and chat through the strangler proxy (route `chat` in
shadow mode, `auth` too so the sign-ups are recorded as the corpus's setup requests): direct and
group chats, messages with idempotent repeats, pagination with cursors, edits, deletes, read
markers, and the mistakes clients make (bad input, chats they are not in, no token, a misspelt
field). One request at a time, waiting after each until the proxy has recorded it, so the corpus
keeps the session's order. Nothing here states an expected answer: the monolith's answers at
replay time are the expectations.

Usage: session.py PROXY_URL ADMIN_URL   (scripts/record-corpus runs it)
"""
import os, secrets, sys, urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recorder import Session

PASSWORD = "corpus-password-1"  # = [fill] password in parity.toml
session = Session(sys.argv[1], sys.argv[2], ("auth", "chat"))
call = session.call


def gql(token, query, variables=None):
    body = {"query": query}
    if variables is not None:
        body["variables"] = variables
    return call("POST", "/graphql", body, token)[1]


def user(name):
    email = f"corpus.{name.lower()}.{secrets.token_hex(4)}@example.test"
    _, b = call("POST", "/auth/register", {"email": email, "password": PASSWORD, "displayName": name})
    return b["accessToken"], b["user"]["id"]


CHAT = "id title isGroup createdAt updatedAt unreadCount members { role joinedAt user { id displayName avatarUrl } } lastMessage { id body senderId }"
MSG = "id chatId senderId sender { id displayName avatarUrl } body clientMessageId createdAt editedAt deletedAt"
SEND = f"mutation Send($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MSG} }} }}"
PAGE = "query Page($chatId: ID!, $first: Int, $after: String) { messages(chatId: $chatId, first: $first, after: $after) { edges { cursor node { id body senderId deletedAt } } pageInfo { hasNextPage endCursor } } }"

ann, ann_id = user("Ann")
ben, ben_id = user("Ben")
cat, cat_id = user("Cat")

# a new user's empty list; a direct chat, found again from either side
gql(ann, f"query Chats {{ chats {{ {CHAT} }} }}")
direct = gql(ann, f"mutation Create($input: CreateChatInput!) {{ createChat(input: $input) {{ {CHAT} }} }}", {"input": {"memberIds": [ben_id]}})["data"]["createChat"]["id"]
gql(ann, "mutation Create($input: CreateChatInput!) { createChat(input: $input) { id isGroup } }", {"input": {"memberIds": [ben_id, ben_id, ann_id]}})
gql(ben, "mutation Create($input: CreateChatInput!) { createChat(input: $input) { id members { role user { displayName } } } }", {"input": {"memberIds": [ann_id]}})
# a group (the title is trimmed)
group = gql(ann, f"mutation Create($input: CreateChatInput!) {{ createChat(input: $input) {{ {CHAT} }} }}", {"input": {"memberIds": [ben_id, cat_id], "title": "  Launch plan  "}})["data"]["createChat"]["id"]
# bad input
gql(ann, "mutation Create($input: CreateChatInput!) { createChat(input: $input) { id } }", {"input": {"memberIds": ["not-a-uuid"], "title": " "}})
gql(ann, "mutation Create($input: CreateChatInput!) { createChat(input: $input) { id } }", {"input": {"memberIds": [ann_id]}})
gql(ann, "mutation Create($input: CreateChatInput!) { createChat(input: $input) { id } }", {"input": {"memberIds": ["00000000-0000-4000-8000-000000000000"]}})
gql(ann, "mutation Create($input: CreateChatInput!) { createChat(input: $input) { id } }", {"input": {}})

# messages, with a retried send (same clientMessageId: the same message, once)
first = gql(ann, SEND, {"input": {"chatId": group, "body": "Kick-off on Monday?", "clientMessageId": "ann-1"}})["data"]["sendMessage"]["id"]
gql(ann, SEND, {"input": {"chatId": group, "body": "Kick-off on Monday?", "clientMessageId": "ann-1"}})
for i, text in enumerate(["Works for me", "Agenda draft in the doc", "Can we start at 10?"]):
    gql(ben, SEND, {"input": {"chatId": group, "body": text, "clientMessageId": f"ben-{i}"}})
gql(cat, SEND, {"input": {"chatId": group, "body": "🚀 ok " + "x" * 120, "clientMessageId": "cat-1"}})
for i in range(4):
    gql(ann, SEND, {"input": {"chatId": group, "body": f"point {i + 1}", "clientMessageId": f"ann-p{i}"}})
gql(ben, SEND, {"input": {"chatId": direct, "body": "lunch?", "clientMessageId": "ben-d1"}})
# bad sends: blank, empty, too long, unknown chat, a chat the sender is not in, no token
gql(ann, SEND, {"input": {"chatId": group, "body": "   ", "clientMessageId": "ann-blank"}})
gql(ann, SEND, {"input": {"chatId": group, "body": "", "clientMessageId": ""}})
gql(ann, SEND, {"input": {"chatId": group, "body": "y" * 4001, "clientMessageId": "ann-long"}})
gql(ann, SEND, {"input": {"chatId": "00000000-0000-4000-8000-000000000000", "body": "hi", "clientMessageId": "ann-x"}})
gql(cat, SEND, {"input": {"chatId": direct, "body": "let me in", "clientMessageId": "cat-x"}})
gql(None, SEND, {"input": {"chatId": group, "body": "anon", "clientMessageId": "anon"}})

# pagination: newest first, three at a time, following endCursor
page = gql(ben, PAGE, {"chatId": group, "first": 3})["data"]["messages"]
while page["pageInfo"]["hasNextPage"]:
    page = gql(ben, PAGE, {"chatId": group, "first": 3, "after": page["pageInfo"]["endCursor"]})["data"]["messages"]
gql(ben, PAGE, {"chatId": group})
gql(ben, PAGE, {"chatId": group, "first": 0})
gql(ben, PAGE, {"chatId": group, "after": "bm90LWEtY3Vyc29y"})
gql(cat, PAGE, {"chatId": direct, "first": 5})

# edits and deletes: only the sender; a deleted message keeps its id, loses its body
gql(ann, f"mutation Edit($id: ID!, $body: String!) {{ editMessage(id: $id, body: $body) {{ {MSG} }} }}", {"id": first, "body": "Kick-off on Tuesday?"})
gql(ben, "mutation Edit($id: ID!, $body: String!) { editMessage(id: $id, body: $body) { id } }", {"id": first, "body": "hijack"})
gql(ann, "mutation Edit($id: ID!, $body: String!) { editMessage(id: $id, body: $body) { id } }", {"id": first, "body": " "})
gql(ann, f"mutation Delete($id: ID!) {{ deleteMessage(id: $id) {{ {MSG} }} }}", {"id": first})
gql(ann, "mutation Delete($id: ID!) { deleteMessage(id: $id) { id body deletedAt } }", {"id": first})
gql(ann, "mutation Edit($id: ID!, $body: String!) { editMessage(id: $id, body: $body) { id } }", {"id": first, "body": "too late"})
gql(ben, "mutation Delete($id: ID!) { deleteMessage(id: $id) { id } }", {"id": "00000000-0000-4000-8000-000000000000"})

# read markers and what each member's list shows
latest = gql(cat, "query Last($id: ID!) { chat(id: $id) { lastMessage { id } unreadCount } }", {"id": group})["data"]["chat"]["lastMessage"]["id"]
gql(cat, f"mutation Read($chatId: ID!, $messageId: ID!) {{ markRead(chatId: $chatId, messageId: $messageId) {{ {CHAT} }} }}", {"chatId": group, "messageId": latest})
gql(cat, "mutation Read($chatId: ID!, $messageId: ID!) { markRead(chatId: $chatId, messageId: $messageId) { id unreadCount } }", {"chatId": group, "messageId": latest})
gql(cat, "mutation Read($chatId: ID!, $messageId: ID!) { markRead(chatId: $chatId, messageId: $messageId) { id } }", {"chatId": direct, "messageId": latest})
for token in (ann, ben, cat):
    gql(token, f"query Chats {{ chats {{ {CHAT} }} }}")
gql(ben, f"query Chat($id: ID!) {{ chat(id: $id) {{ {CHAT} }} }}", {"id": direct})

# what else clients send: a GET, an inline literal, a misspelt field, a missing variable, no token
q = urllib.parse.quote("query Chats { chats { id title unreadCount } }")
call("GET", f"/graphql?query={q}", token=ann)
gql(ann, f'{{ chat(id: "{group}") {{ id title members {{ user {{ displayName }} }} }} }}')
gql(ann, "query Chats { chats { id titel } }")
gql(ann, "query Chat($id: ID!) { chat(id: $id) { id } }", {})
gql(None, "query Chats { chats { id } }")
