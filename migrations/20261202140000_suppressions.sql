-- Suppression list, per tenant: addresses that must not be mailed again, because their
-- server refused them permanently as addresses (5.1.x: no such mailbox, bad domain), or
-- because the tenant said so (a complaint, an unsubscribe). `address` is the recipient
-- with its domain in lower case (local parts are case-sensitive in principle; domains
-- never are), so lookups compare it case-insensitively on the domain.
CREATE TABLE suppressions (
    tenant_id  uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    address    text        NOT NULL,
    -- 'bounce' (added by a delivery) or 'manual' (POST /v1/suppressions)
    source     text        NOT NULL CHECK (source IN ('bounce', 'manual')),
    reason     text        NOT NULL,
    -- the refusal that added it, for bounces: {code, enhanced, text}
    reply      jsonb,
    message_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, address)
);

-- A message whose every recipient is suppressed fails without an SMTP session; its
-- history says so with its own event.
ALTER TABLE message_events DROP CONSTRAINT message_events_kind_check;
ALTER TABLE message_events ADD CONSTRAINT message_events_kind_check
    CHECK (kind IN ('accepted', 'attempt', 'deferred', 'sent', 'failed', 'cancelled',
                    'expired', 'suppressed'));
