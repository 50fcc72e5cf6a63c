-- Messages and their history: the system of record for every accepted send.

CREATE TABLE messages (
    id              uuid PRIMARY KEY,                -- UUIDv7: time-ordered
    status          text NOT NULL
                    CHECK (status IN ('queued', 'sending', 'deferred', 'sent', 'failed', 'cancelled')),
    connection      text NOT NULL,                   -- name of the SMTP connection
    from_addr       text NOT NULL,                   -- header From, display form
    recipients      jsonb NOT NULL,                  -- {"to": [...], "cc": [...], "bcc": [...]}
    envelope_from   text NOT NULL,
    envelope_to     text[] NOT NULL,
    subject         text NOT NULL,
    message_id      text NOT NULL,                   -- RFC 5322 Message-ID header
    size            integer NOT NULL,                -- bytes of the rendered message
    raw             bytea,                           -- rendered message; NULL once purged
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_reply      jsonb,                           -- {"code", "enhanced", "text"}
    last_error      text,
    recipient_results jsonb,                         -- per-recipient RCPT outcomes of the last attempt
    published_at    timestamptz,                     -- when RabbitMQ confirmed the publish (outbox)
    claimed_at      timestamptz,                     -- when the current attempt started
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);

-- The outbox relay looks for accepted messages that RabbitMQ never confirmed.
CREATE INDEX messages_unpublished_idx ON messages (created_at) WHERE published_at IS NULL;

CREATE TABLE message_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    kind        text NOT NULL
                CHECK (kind IN ('accepted', 'attempt', 'deferred', 'sent', 'failed', 'cancelled', 'expired')),
    at          timestamptz NOT NULL DEFAULT now(),
    attempt     integer,
    reply       jsonb,                               -- SMTP reply of an attempt
    detail      text,
    recipients  jsonb                                -- per-recipient outcomes of an attempt
);

CREATE INDEX message_events_message_idx ON message_events (message_id, id);
