-- Session leases: a connection's max_connections holds across every worker process.
-- A worker opens an SMTP session only while it holds one of the connection's slots;
-- its heartbeat renews its leases, a clean stop deletes them, and a dead worker's
-- lapse after worker.presumed_dead_after. One row per slot in use.
CREATE TABLE smtp_session_leases (
    connection text        NOT NULL,
    slot       integer     NOT NULL,
    worker     uuid        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (connection, slot)
);
CREATE INDEX smtp_session_leases_worker_idx ON smtp_session_leases (worker);
