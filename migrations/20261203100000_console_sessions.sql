-- Sessions of the operator's console (/ui). The browser holds a random token in an
-- HttpOnly cookie; only its SHA-256 is stored, so this table leaks no usable session.
-- Every request re-reads the key (`key_lookup`): a revoked key or a disabled tenant
-- ends its sessions at once, in every API process. `csrf` is the token every
-- state-changing form of the session must carry.
CREATE TABLE console_sessions (
    token_hash bytea       PRIMARY KEY,
    key_id     uuid        NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    key_lookup text        NOT NULL,
    csrf       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry_idx ON console_sessions (expires_at);
