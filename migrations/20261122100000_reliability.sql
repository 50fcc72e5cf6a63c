-- Crash safety and idempotency.

-- Live workers. A message in 'sending' whose worker stopped heartbeating may be taken
-- over by another worker.
CREATE TABLE workers (
    id           uuid PRIMARY KEY,
    host         text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE messages ADD COLUMN claimed_by uuid;

-- Idempotency-Key: the first request's body hash and answer, per key.
CREATE TABLE idempotency_keys (
    scope        text NOT NULL DEFAULT '',          -- who may reuse the key (API key, later)
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);
