-- Alarms that dispatchers acknowledge, their history, and the outbox of staff notifications. Times are
-- UTC milliseconds; flags 0/1. One row per occurrence: a repeat while not cleared bumps `count`.

CREATE TABLE alarms (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    key                TEXT    NOT NULL,
    tenant_id          BIGINT  REFERENCES tenants(id) ON DELETE CASCADE,
    severity           TEXT    NOT NULL,
    message            TEXT    NOT NULL,
    source             TEXT    NOT NULL,
    sensor_id          BIGINT  REFERENCES sensors(id) ON DELETE SET NULL,
    site_id            BIGINT  REFERENCES sites(id) ON DELETE SET NULL,
    supply_point_id    BIGINT  REFERENCES supply_points(id) ON DELETE SET NULL,
    state              TEXT    NOT NULL,
    count              BIGINT  NOT NULL DEFAULT 1,
    raised_at          BIGINT  NOT NULL,
    last_at            BIGINT  NOT NULL,
    acknowledged_at    BIGINT,
    acknowledged_by    TEXT,
    ack_comment        TEXT,
    cleared_at         BIGINT,
    cleared_by         TEXT,
    clear_reason       TEXT,
    shelved_until      BIGINT,
    inhibited_by       BIGINT  REFERENCES alarms(id) ON DELETE SET NULL,
    in_maintenance     BIGINT  NOT NULL DEFAULT 0,
    escalation_step    BIGINT  NOT NULL DEFAULT 0,
    next_escalation_at BIGINT
);
-- At most one alarm per key is not cleared: the dedupe rule, kept by the database under races.
CREATE UNIQUE INDEX alarms_open_key ON alarms(key) WHERE state <> 'cleared';
CREATE INDEX alarms_state ON alarms(state, id);
CREATE INDEX alarms_escalation ON alarms(next_escalation_at) WHERE next_escalation_at IS NOT NULL;
CREATE INDEX alarms_raised ON alarms(raised_at);

CREATE TABLE alarm_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id BIGINT  NOT NULL REFERENCES alarms(id) ON DELETE CASCADE,
    at       BIGINT  NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    details  TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX alarm_history_alarm ON alarm_history(alarm_id, id);

-- Outbox of notifications to staff (escalations, rules' notify_staff); delivered by the channels.
CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  BIGINT  REFERENCES tenants(id) ON DELETE CASCADE,
    alarm_id   BIGINT  REFERENCES alarms(id) ON DELETE SET NULL,
    recipient  TEXT    NOT NULL,
    channels   TEXT    NOT NULL DEFAULT '[]',
    message    TEXT    NOT NULL,
    step       BIGINT,
    status     TEXT    NOT NULL DEFAULT 'pending',
    created_at BIGINT  NOT NULL
);
CREATE INDEX notifications_status ON notifications(status, id);
CREATE INDEX notifications_alarm ON notifications(alarm_id);
