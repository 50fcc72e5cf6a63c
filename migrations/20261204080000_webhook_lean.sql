-- Each delivery written and each try recorded had its foreign key checked by a query
-- of its own, which also locked the referenced row: every transaction writing
-- deliveries for one endpoint shared a lock on the endpoint's row (a MultiXact when
-- they overlap). Without the constraints those rows are removed explicitly: with their
-- endpoint (Store::delete_webhook), and by retention when old.
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_endpoint_id_fkey;
ALTER TABLE webhook_attempts DROP CONSTRAINT webhook_attempts_delivery_id_fkey;

-- Retention finds old rows by time; both tables are written in time order, where a
-- BRIN index is small and nearly free to maintain.
CREATE INDEX webhook_deliveries_occurred_brin ON webhook_deliveries USING brin (occurred_at);
CREATE INDEX webhook_attempts_at_brin ON webhook_attempts USING brin (at);
