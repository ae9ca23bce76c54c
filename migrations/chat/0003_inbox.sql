-- Each user's inbox on the user's shard (docs/chat-sharding.md, "Why an inbox"): one row per chat
-- the user is in, with what the chat list needs to list and order it, so `chats` reads one shard.
-- A projection of the chats' truth (their home shards, or the monolith's tables): the chat data
-- move derives it for the users it moves, the chat service keeps it — in the message's
-- transaction for the rows on the chat's home shard and the sender's, from message.sent and
-- chat.created for everyone else. Every write is an upsert that only moves updated_at forward,
-- so writes in any order, repeated, end in the same rows.
CREATE TABLE chat.inbox (
    user_id    uuid NOT NULL,
    chat_id    uuid NOT NULL,
    title      text,
    is_group   boolean NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, chat_id)
);
-- `chats`: a user's rows, newest activity first
CREATE INDEX inbox_list_idx ON chat.inbox (user_id, updated_at DESC, chat_id DESC);
-- the message's transaction touches the rows of its chat on the home shard
CREATE INDEX inbox_chat_idx ON chat.inbox (chat_id);
