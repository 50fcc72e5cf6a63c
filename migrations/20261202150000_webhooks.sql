-- Webhooks: producers hear of their messages' status changes, signed (Standard
-- Webhooks), retried on a schedule, visible and replayable.

-- Where a tenant wants to hear of which events.
CREATE TABLE webhook_endpoints (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url             text        NOT NULL,
    events          text[]      NOT NULL,
    description     text,
    -- the signing secret ("whsec_..."), encrypted with the master key bound to the id
    secret_enc      bytea       NOT NULL,
    -- the secret before the last rotation: it signs too until previous_until
    previous_secret_enc bytea,
    previous_until  timestamptz,
    -- failing without a success since (cleared by a success): disabled after
    -- webhooks.disable_after
    failing_since   timestamptz,
    disabled_at     timestamptz,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, id);

-- One event for one endpoint, written in the transaction that changed the message's
-- status (so none is lost), with a snapshot of what changed. `id` is the webhook-id
-- receivers deduplicate on: the same on every retry.
CREATE TABLE webhook_deliveries (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id      uuid        NOT NULL,
    type            text        NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    -- the message as it was at the event
    status          text        NOT NULL,
    attempts        integer     NOT NULL,
    reply           jsonb,
    error           text,
    recipients      jsonb,
    next_attempt    timestamptz,
    -- delivery: pending (due at due_at), delivered, failed (retries exhausted or the
    -- endpoint disabled)
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    tries           integer     NOT NULL DEFAULT 0,
    due_at          timestamptz NOT NULL DEFAULT now(),
    -- taken by a dispatcher until then (not indexed, so that taking a row is a HOT
    -- update: no index is written)
    leased_until    timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz
) WITH (fillfactor = 70); -- room on each page for the HOT update of the lease
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (due_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, occurred_at);

-- Every try of a delivery: what the endpoint answered, and how long it took.
CREATE TABLE webhook_attempts (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  uuid        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id  uuid        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    http_status  integer,
    error        text,
    duration_ms  integer     NOT NULL,
    succeeded    boolean     NOT NULL
);
CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (endpoint_id, at);
