-- A shard's outbox (docs/events.md "The outbox", docs/chat-sharding.md): the events of the chats
-- homed on this shard, written in the transaction that writes the message here (a shard cannot
-- write into the monolith's outbox in the same transaction). The chat service runs a relay per
-- shard (one leader per shard database: the relay's advisory lock is per database). Same
-- columns as legacy.outbox.
CREATE TABLE chat.outbox (
    id           uuid PRIMARY KEY,
    seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    topic        text NOT NULL,
    key          text NOT NULL,
    type         text NOT NULL,
    version      integer NOT NULL,
    payload      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished_idx ON chat.outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_idx ON chat.outbox (published_at) WHERE published_at IS NOT NULL;
