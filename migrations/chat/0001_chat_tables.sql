-- The chat tables of one shard (docs/chat-sharding.md). Applied to every shard database by
-- scripts/migrate (CHAT_SHARD_URLS), never to the monolith's database. The same columns as
-- legacy.chats, legacy.chat_members and legacy.messages, so the move copies rows as they are;
-- what differs is what a shard cannot have:
--   * no foreign keys to users: users live in the monolith's database (the auth service's);
--   * no defaults for ids and times: rows are copied with theirs, new ones get the service's;
--   * messages.seq is not an identity: copied messages keep the monolith's seq, new ones take
--     chat.message_seq, which the mover starts above the monolith's highest seq at the switch with
--     this shard's index as offset (INCREMENT BY 64: unique across up to 64 shards, increasing
--     within a chat because a chat is written on one shard at a time).
-- Which rows a shard holds: the chats whose id is in its buckets, with their members and
-- messages (one copy of a group's messages).

CREATE TABLE chat.chats (
    id         uuid PRIMARY KEY,
    title      text,
    is_group   boolean NOT NULL,
    created_by uuid NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE chat.chat_members (
    chat_id       uuid NOT NULL REFERENCES chat.chats (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL,
    role          text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    joined_at     timestamptz NOT NULL,
    -- seq of the newest message this member has read (0: none)
    last_read_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_user_idx ON chat.chat_members (user_id);

CREATE SEQUENCE chat.message_seq INCREMENT BY 64 MINVALUE 1;

CREATE TABLE chat.messages (
    id                uuid PRIMARY KEY,
    seq               bigint NOT NULL UNIQUE DEFAULT nextval('chat.message_seq'),
    chat_id           uuid NOT NULL REFERENCES chat.chats (id) ON DELETE CASCADE,
    sender_id         uuid NOT NULL,
    body              text NOT NULL,
    client_message_id text,
    created_at        timestamptz NOT NULL,
    edited_at         timestamptz,
    deleted_at        timestamptz
);
CREATE INDEX messages_chat_seq_idx ON chat.messages (chat_id, seq DESC);
-- sendMessage is idempotent per (chat, sender, client message id)
CREATE UNIQUE INDEX messages_client_id_key ON chat.messages (chat_id, sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
