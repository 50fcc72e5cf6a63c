-- Tenant isolation: a tenant's listing runs on an index that leads with the tenant,
-- then pages by id (UUIDv7, time-ordered); its status and connection filters are
-- filters over that index. Every index is written on every status change (status is
-- indexed, so no update of a message is HOT): measured with scripts/bench.sh, three
-- tenant indexes on top of the others cost a fifth of the batch throughput. So the
-- tenant's index takes the place of the connection one: a connection belongs to one
-- tenant (or is shared), and operators narrow by tenant or status.
CREATE INDEX messages_tenant_id_idx ON messages (tenant_id, id);
DROP INDEX messages_connection_id_idx;

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

