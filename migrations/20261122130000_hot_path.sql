-- Keep the hot row small and its updates cheap (measured: PostgreSQL was the CPU
-- bottleneck of delivery). The rendered message moves to its own table, so status
-- updates no longer copy it; "published" becomes a row in a small outbox table that is
-- deleted on confirm, instead of one more update of every message.

CREATE TABLE message_bodies (
    message_id uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    raw        bytea NOT NULL
);
INSERT INTO message_bodies (message_id, raw)
    SELECT id, raw FROM messages WHERE raw IS NOT NULL;

CREATE TABLE outbox (
    message_id uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_created_idx ON outbox (created_at);
INSERT INTO outbox (message_id, created_at)
    SELECT id, created_at FROM messages WHERE published_at IS NULL;

-- Drops messages_unpublished_idx and messages_retention_idx with their columns.
ALTER TABLE messages DROP COLUMN raw, DROP COLUMN published_at;
-- Every status change had to maintain it; deleting a connection can count its
-- messages through messages_connection_id_idx instead.
DROP INDEX IF EXISTS messages_pending_connection_idx;
