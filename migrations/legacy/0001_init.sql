-- BrainMessenger v1.0 (the NestJS monolith): every table the monolith owns lives in schema
-- `legacy`. Extracted services read and write these tables during their shared-database step,
-- so column meanings are part of the contract (docs/api.md).

CREATE TABLE legacy.users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL,
    -- bcrypt ($2a$/$2b$, cost from BCRYPT_COST); NULL for accounts that only sign in with Google
    password_hash text,
    display_name  text NOT NULL,
    avatar_url    text,
    bio           text,
    google_sub    text UNIQUE,
    -- base32 TOTP secret (RFC 6238, SHA-1, 6 digits, 30 s); set by 2fa/setup, armed by 2fa/enable
    totp_secret   text,
    totp_enabled  boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower_key ON legacy.users (lower(email));

-- Opaque refresh tokens, stored as SHA-256 hex of the token. Rotation: a refresh marks the
-- presented token used and issues a new one in the same family; presenting a used token again
-- revokes the whole family (reuse detection).
CREATE TABLE legacy.refresh_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES legacy.users (id) ON DELETE CASCADE,
    family_id   uuid NOT NULL,
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    replaced_by uuid
);
CREATE INDEX refresh_tokens_family_idx ON legacy.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON legacy.refresh_tokens (user_id);

CREATE TABLE legacy.password_resets (
    token_hash text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES legacy.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE TABLE legacy.chats (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title      text,
    is_group   boolean NOT NULL,
    created_by uuid NOT NULL REFERENCES legacy.users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE legacy.chat_members (
    chat_id       uuid NOT NULL REFERENCES legacy.chats (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES legacy.users (id) ON DELETE CASCADE,
    role          text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    joined_at     timestamptz NOT NULL DEFAULT now(),
    -- seq of the newest message this member has read (0: none)
    last_read_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_user_idx ON legacy.chat_members (user_id);

CREATE TABLE legacy.messages (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- global, increasing: the pagination cursor and the read marker
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    chat_id           uuid NOT NULL REFERENCES legacy.chats (id) ON DELETE CASCADE,
    sender_id         uuid NOT NULL REFERENCES legacy.users (id),
    body              text NOT NULL,
    client_message_id text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    edited_at         timestamptz,
    deleted_at        timestamptz
);
CREATE INDEX messages_chat_seq_idx ON legacy.messages (chat_id, seq DESC);
-- sendMessage is idempotent per (chat, sender, client message id)
CREATE UNIQUE INDEX messages_client_id_key ON legacy.messages (chat_id, sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

CREATE TABLE legacy.devices (
    token        text PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES legacy.users (id) ON DELETE CASCADE,
    platform     text NOT NULL CHECK (platform IN ('android', 'ios', 'web')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_user_idx ON legacy.devices (user_id);

CREATE TABLE legacy.notifications (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES legacy.users (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz
);
CREATE INDEX notifications_user_idx ON legacy.notifications (user_id, created_at DESC);

CREATE TABLE legacy.plans (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    stripe_price_id text NOT NULL UNIQUE,
    amount_cents    integer NOT NULL CHECK (amount_cents >= 0),
    currency        text NOT NULL,
    interval        text NOT NULL CHECK (interval IN ('month', 'year'))
);
INSERT INTO legacy.plans (id, name, stripe_price_id, amount_cents, currency, interval) VALUES
    ('pro-monthly', 'Pro (monthly)', 'price_pro_monthly', 499, 'usd', 'month'),
    ('pro-yearly', 'Pro (yearly)', 'price_pro_yearly', 4990, 'usd', 'year');

CREATE TABLE legacy.stripe_customers (
    user_id     uuid PRIMARY KEY REFERENCES legacy.users (id) ON DELETE CASCADE,
    customer_id text NOT NULL UNIQUE
);

CREATE TABLE legacy.subscriptions (
    stripe_subscription_id text PRIMARY KEY,
    user_id                uuid NOT NULL REFERENCES legacy.users (id) ON DELETE CASCADE,
    plan_id                text REFERENCES legacy.plans (id),
    status                 text NOT NULL,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user_idx ON legacy.subscriptions (user_id);

-- Webhook idempotency: an event id is processed once, however often Stripe delivers it.
CREATE TABLE legacy.stripe_events (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
