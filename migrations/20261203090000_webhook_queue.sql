-- Webhook deliveries travel through RabbitMQ like mail (a queue and delay tiers of
-- their own): no process leases rows any more, and the reconciler republishes a
-- pending delivery whose job was lost, at most once per grace.
ALTER TABLE webhook_deliveries DROP COLUMN leased_until;
ALTER TABLE webhook_deliveries ADD COLUMN reconciled_at timestamptz;
