-- The push job's own state (extracted/notification, docs/events.md "The push job").
--
-- One row per (event, device): the job claims it before calling FCM and records the outcome, so
-- a redelivered event (at least once) never pushes a device twice. A claim is a lease: another
-- instance (after a rebalance) waits for it, and takes it over only once it has expired (the
-- holder died mid-push).
CREATE TABLE notification.pushes (
    event_id    uuid NOT NULL,
    token       text NOT NULL,
    message_id  uuid NOT NULL,
    user_id     uuid NOT NULL,
    -- sending (claimed), sent, unregistered (token deleted), dead (given up: on the dead-letter topic)
    status      text NOT NULL CHECK (status IN ('sending', 'sent', 'unregistered', 'dead')),
    attempts    integer NOT NULL DEFAULT 0,
    -- an FCM request is under way (set before it, cleared with its outcome): a claim taken over
    -- with this set had a request whose outcome nobody knows (its sender died mid-request)
    in_flight   boolean NOT NULL DEFAULT false,
    -- how often such a push was sent again: the only way a device can get one twice
    resent_unknown integer NOT NULL DEFAULT 0,
    last_error  text,
    lease_until timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, token)
);
CREATE INDEX pushes_message_idx ON notification.pushes (message_id);
CREATE INDEX pushes_created_at_idx ON notification.pushes (created_at);
