-- Tenants: each producing application owns its API keys, SMTP connections and
-- messages. What exists already belongs to the tenant `default`. Its id is fixed, so
-- that the columns below are added with a constant default: PostgreSQL records the
-- default instead of rewriting the messages table.

CREATE TABLE tenants (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    max_rate_per_second  integer CHECK (max_rate_per_second > 0),
    allowed_from_domains text[],                 -- NULL: any sender domain
    disabled_at          timestamptz,            -- keys get 403, mail waits
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

INSERT INTO tenants (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'default');

ALTER TABLE api_keys
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001'
        REFERENCES tenants (id);
ALTER TABLE api_keys ALTER COLUMN tenant_id DROP DEFAULT;

ALTER TABLE smtp_connections
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001'
        REFERENCES tenants (id),
    -- Usable by every tenant's sends (set by an operator).
    ADD COLUMN shared boolean NOT NULL DEFAULT false;
ALTER TABLE smtp_connections ALTER COLUMN tenant_id DROP DEFAULT;

ALTER TABLE messages
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001'
        REFERENCES tenants (id);
ALTER TABLE messages ALTER COLUMN tenant_id DROP DEFAULT;
