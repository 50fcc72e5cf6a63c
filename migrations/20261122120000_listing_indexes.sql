-- Operator listings page by id (UUIDv7, so time order) within a status or connection.
CREATE INDEX messages_status_id_idx ON messages (status, id);
CREATE INDEX messages_connection_id_idx ON messages (connection, id);
-- Retention finds old terminal messages that still hold their content.
CREATE INDEX messages_retention_idx ON messages (created_at) WHERE raw IS NOT NULL;
