-- Telephony: per-site IVR mode overrides (set by rules or dispatchers) and the record of every call.

CREATE TABLE ivr_overrides (
    site_id      BIGINT  PRIMARY KEY REFERENCES sites(id) ON DELETE CASCADE,
    mode         TEXT    NOT NULL,
    announcement TEXT,
    set_by       TEXT    NOT NULL,
    set_at       BIGINT  NOT NULL
);

CREATE TABLE calls (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sip_call_id  TEXT    NOT NULL,
    direction    TEXT    NOT NULL,
    from_number  TEXT    NOT NULL,
    to_number    TEXT    NOT NULL,
    tenant_id    BIGINT  REFERENCES tenants(id) ON DELETE SET NULL,
    consumer_id  BIGINT  REFERENCES consumers(id) ON DELETE SET NULL,
    site_id      BIGINT  REFERENCES sites(id) ON DELETE SET NULL,
    mode         TEXT,
    started_at   BIGINT  NOT NULL,
    answered_at  BIGINT,
    ended_at     BIGINT,
    outcome      TEXT    NOT NULL,
    digits       TEXT    NOT NULL DEFAULT '',
    queue        TEXT
);
CREATE INDEX calls_started ON calls(started_at);
CREATE INDEX calls_tenant ON calls(tenant_id, id);
