-- Who sends the pushes for new messages during the notification cut-over (docs/events.md
-- "Who pushes"). `monolith`: whichever side handles sendMessage pushes in-process after the
-- commit (as v1 always did) and says so in the event (`pushedInProcess: true`); the
-- notification push job only compares (shadow). `notification`: nobody pushes in-process, the
-- push job sends every push from message.sent. Each message's side is decided in its own
-- transaction, so a switch (or its rollback) neither doubles nor skips a push.
CREATE TABLE legacy.push_owner (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    owner      text NOT NULL CHECK (owner IN ('monolith', 'notification')),
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO legacy.push_owner (owner) VALUES ('monolith');

-- Every push the in-process senders (the monolith, extracted/chat) made, with FCM's answer:
-- what the push job's shadow compares its own plan with. Pruned after 7 days by the job.
CREATE TABLE legacy.push_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid NOT NULL,
    user_id    uuid NOT NULL,
    -- the FCM request's `message` (token, notification, data)
    request    jsonb NOT NULL,
    -- FCM's HTTP status; NULL when the request failed (network error, timeout)
    status     integer,
    sender     text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_log_message_idx ON legacy.push_log (message_id);
CREATE INDEX push_log_sent_at_idx ON legacy.push_log (sent_at);
