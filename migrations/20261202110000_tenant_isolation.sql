-- Tenant isolation: every listing of a tenant's messages runs on an index that leads
-- with the tenant, then pages by id (UUIDv7, time-ordered) as the cross-tenant
-- indexes do. The cross-tenant indexes stay for operators.
CREATE INDEX messages_tenant_id_idx ON messages (tenant_id, id);
CREATE INDEX messages_tenant_status_id_idx ON messages (tenant_id, status, id);
CREATE INDEX messages_tenant_connection_id_idx ON messages (tenant_id, connection, id);

-- Idempotency keys belong to the tenant, no longer to the API key that used them.
-- Keys recorded before move to their key's tenant; where two keys of one tenant used
-- the same Idempotency-Key, the oldest record is kept.
WITH moved AS (
    SELECT DISTINCT ON (k.tenant_id, i.key) i.scope, i.key, k.tenant_id
      FROM idempotency_keys i JOIN api_keys k ON i.scope = k.id::text
     ORDER BY k.tenant_id, i.key, i.created_at)
UPDATE idempotency_keys i SET scope = moved.tenant_id::text
  FROM moved WHERE i.scope = moved.scope AND i.key = moved.key;
DELETE FROM idempotency_keys i USING api_keys k WHERE i.scope = k.id::text;

