-- PostgreSQL is the record; RabbitMQ can always be rebuilt from it.

ALTER TABLE messages
    ADD COLUMN send_at timestamptz,        -- SendAt: the first attempt is not before this
    ADD COLUMN expires_at timestamptz,     -- ExpiresAt: failed as expired if not sent by then
    -- No job exists for the message: it waits here until next_attempt_at (a send
    -- scheduled beyond the delay queues), and the reconciler publishes it when due.
    ADD COLUMN held boolean NOT NULL DEFAULT false,
    -- When the reconciler last published a job for the message (at most once per grace).
    ADD COLUMN reconciled_at timestamptz;

-- A waiting message is due at next_attempt_at (a queued one at once).
UPDATE messages SET next_attempt_at = created_at
 WHERE status = 'queued' AND next_attempt_at IS NULL;

-- The reconciler's scan: waiting messages by when they are due.
CREATE INDEX messages_due_idx ON messages (next_attempt_at)
    WHERE status IN ('queued', 'deferred');

-- The outbox relay leases the rows it publishes, outside any transaction.
ALTER TABLE outbox ADD COLUMN leased_until timestamptz;
