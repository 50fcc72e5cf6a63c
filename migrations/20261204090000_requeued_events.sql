-- An operator may take a failed message back from the dead-letter queue: it is queued
-- again, and its history says so with its own event.
--
-- The new check only widens the old one, so every stored event already passes it:
-- NOT VALID spares a scan of the whole (append-only, large) table while the
-- migration holds its lock. Rows written from now on are checked as before.
ALTER TABLE message_events DROP CONSTRAINT message_events_kind_check;
ALTER TABLE message_events ADD CONSTRAINT message_events_kind_check
    CHECK (kind IN ('accepted', 'attempt', 'deferred', 'sent', 'failed', 'cancelled',
                    'expired', 'suppressed', 'requeued')) NOT VALID;
