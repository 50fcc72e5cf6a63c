-- SMTP connections stored once and reused by every sender, and API keys.

CREATE TABLE smtp_connections (
    id                  uuid PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    host                text NOT NULL,
    port                integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    security            text NOT NULL CHECK (security IN ('starttls', 'tls', 'none')),
    username            text,
    password_enc        bytea,                 -- AES-256-GCM under the master key
    default_from        text,
    max_connections     integer NOT NULL CHECK (max_connections > 0),
    max_rate_per_second integer CHECK (max_rate_per_second > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL,
    lookup             text NOT NULL UNIQUE,   -- public part of the key, to find the row
    secret_hash        bytea NOT NULL,         -- SHA-256 of the secret part
    scopes             text[] NOT NULL,
    default_connection text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    revoked_at         timestamptz
);

-- Messages waiting on a connection (deleting it must not strand them silently).
CREATE INDEX messages_pending_connection_idx ON messages (connection)
    WHERE status IN ('queued', 'deferred', 'sending');
