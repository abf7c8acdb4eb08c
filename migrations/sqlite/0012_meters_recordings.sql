-- Telephony, issue 6 (IVR side): consumers' meters and their readings (the meter-readings robot),
-- subscriptions to "tell me when it is over" of an outage, and the recording of a call. Times are UTC
-- milliseconds.

CREATE TABLE meters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id        BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    consumer_id      BIGINT  NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
    site_id          BIGINT  REFERENCES sites(id) ON DELETE SET NULL,
    kind             TEXT    NOT NULL,
    serial           TEXT    NOT NULL,
    last_value       DOUBLE PRECISION,
    last_at          BIGINT,
    monthly_increase DOUBLE PRECISION,
    UNIQUE (tenant_id, serial)
);
CREATE INDEX meters_consumer ON meters(consumer_id, id);

CREATE TABLE meter_readings (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    meter_id   BIGINT  NOT NULL REFERENCES meters(id) ON DELETE CASCADE,
    value      DOUBLE PRECISION NOT NULL,
    at         BIGINT  NOT NULL,
    call_id    BIGINT  REFERENCES calls(id) ON DELETE SET NULL,
    source     TEXT    NOT NULL,
    questioned BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX meter_readings_meter ON meter_readings(meter_id, at);
CREATE INDEX meter_readings_call ON meter_readings(call_id);

CREATE TABLE outage_subscriptions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    outage_id   BIGINT  NOT NULL REFERENCES outages(id) ON DELETE CASCADE,
    phone       TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    language    TEXT    NOT NULL,
    call_id     BIGINT  REFERENCES calls(id) ON DELETE SET NULL,
    created_at  BIGINT  NOT NULL,
    notified_at BIGINT,
    notification_id BIGINT REFERENCES notifications(id) ON DELETE SET NULL,
    UNIQUE (outage_id, phone, channel)
);
CREATE INDEX outage_subscriptions_pending ON outage_subscriptions(notified_at, outage_id);

ALTER TABLE calls ADD COLUMN recording TEXT;
