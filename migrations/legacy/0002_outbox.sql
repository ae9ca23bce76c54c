-- The transactional outbox (docs/events.md): an event is written in the transaction that caused
-- it and published to Kafka by a relay, which marks it published. A crash between the commit
-- and the publish, or a broker restart, loses nothing; a crash between the publish and the mark
-- publishes it again (consumers deduplicate by id). Written by the monolith and the extracted
-- services on the monolith's tables; relayed by whichever process holds the relay lock.
CREATE TABLE legacy.outbox (
    id           uuid PRIMARY KEY,
    -- publication order: one relay publishes in this order, so one key's events stay in order
    -- (sendMessage locks the chat before writing, so a chat's rows are numbered in commit order)
    seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    topic        text NOT NULL,
    key          text NOT NULL,
    type         text NOT NULL,
    version      integer NOT NULL,
    payload      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
-- what the relay reads: the unpublished rows, oldest first
CREATE INDEX outbox_unpublished_idx ON legacy.outbox (seq) WHERE published_at IS NULL;
-- what the relay prunes: published rows past their retention
CREATE INDEX outbox_published_idx ON legacy.outbox (published_at) WHERE published_at IS NOT NULL;
