-- Webhooks: endpoints that receive signed POSTs of tenant events (Standard Webhooks), and
-- the outbox of deliveries. A trigger on tenantd.tenant_events writes one delivery per
-- subscribed, enabled endpoint in the transaction that records the event, which is the
-- transaction of the state change it reports: an event is never lost across a crash, and
-- never announced for a change that rolled back.
CREATE TABLE tenantd.webhooks (
    id              uuid PRIMARY KEY,
    url             text NOT NULL,
    events          text[] NOT NULL CHECK (pg_catalog.cardinality(events) > 0),
    -- whsec_... sealed with the master key, bound to 'webhook:<id>'.
    secret_sealed   text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenantd.webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      uuid NOT NULL REFERENCES tenantd.webhooks (id) ON DELETE CASCADE,
    -- The webhook-id header: one per event, the same on every attempt.
    message_id      text NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, message_id)
);
CREATE INDEX webhook_deliveries_due_idx ON tenantd.webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON tenantd.webhook_deliveries (webhook_id, id);

-- The mapping from catalog event kinds to webhook event types is the one of
-- `webhooks::WebhookEvent::from_kind` (a unit test compares them).
CREATE FUNCTION tenantd.webhook_outbox() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
DECLARE
    event_type text;
    slug text;
BEGIN
    event_type := CASE NEW.kind
        WHEN 'ready' THEN 'tenant.ready'
        WHEN 'error' THEN 'tenant.error'
        WHEN 'suspended' THEN 'tenant.suspended'
        WHEN 'resumed' THEN 'tenant.resumed'
        WHEN 'deleted' THEN 'tenant.deleted'
        WHEN 'upgrade.failed' THEN 'upgrade.failed'
        WHEN 'backup.failed' THEN 'backup.failed'
        WHEN 'move.finished' THEN 'tenant.moved'
    END;
    IF event_type IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT t.slug INTO slug FROM tenantd.tenants t WHERE t.id OPERATOR(pg_catalog.=) NEW.tenant_id;
    INSERT INTO tenantd.webhook_deliveries (webhook_id, message_id, event_type, payload)
    SELECT w.id,
           'msg_' OPERATOR(pg_catalog.||) pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''),
           event_type,
           pg_catalog.jsonb_build_object(
               'type', event_type,
               'timestamp', pg_catalog.to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'data', pg_catalog.jsonb_build_object(
                   'event_id', NEW.id,
                   'tenant_id', NEW.tenant_id,
                   'slug', slug,
                   'detail', NEW.detail,
                   'actor', NEW.actor))
    FROM tenantd.webhooks w
    WHERE w.enabled AND event_type OPERATOR(pg_catalog.=) ANY (w.events);
    RETURN NULL;
END $$;

CREATE TRIGGER tenant_events_webhooks AFTER INSERT ON tenantd.tenant_events
    FOR EACH ROW EXECUTE FUNCTION tenantd.webhook_outbox();
