-- Tickets (work orders) and field staff (hub/src/tickets.rs). Times are UTC milliseconds; working hours
-- are local times in the worker's time zone, kept as JSON text. `overdue_at` and a reminder's
-- `fired_at` record that the scheduler has raised `ticket_overdue`, so a restart neither repeats nor
-- loses one.

CREATE TABLE workers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    external_id TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    trade       TEXT    NOT NULL,
    skills      TEXT    NOT NULL DEFAULT '[]',
    phone       TEXT,
    email       TEXT,
    telegram    TEXT,
    time_zone   TEXT    NOT NULL,
    -- {"mon": ["09:00-13:00", "14:00-18:00"], ...}
    hours       TEXT    NOT NULL DEFAULT '{}',
    -- The hub user the worker logs in as (role operator) to report completion.
    user_id     BIGINT  REFERENCES users(id) ON DELETE SET NULL,
    active      BIGINT  NOT NULL DEFAULT 1,
    created_at  BIGINT  NOT NULL,
    UNIQUE (tenant_id, external_id)
);

-- A day that differs from the weekly hours: other hours, or none (a day off).
CREATE TABLE worker_days (
    worker_id BIGINT NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
    day       TEXT   NOT NULL,
    hours     TEXT   NOT NULL DEFAULT '[]',
    note      TEXT   NOT NULL DEFAULT '',
    PRIMARY KEY (worker_id, day)
);

CREATE TABLE tickets (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id        BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    site_id          BIGINT  REFERENCES sites(id) ON DELETE SET NULL,
    category         TEXT    NOT NULL,
    description      TEXT    NOT NULL DEFAULT '',
    consumer_id      BIGINT  REFERENCES consumers(id) ON DELETE SET NULL,
    contact_phone    TEXT,
    status           TEXT    NOT NULL,
    priority         TEXT    NOT NULL,
    assignee_id      BIGINT  REFERENCES users(id) ON DELETE SET NULL,
    worker_id        BIGINT  REFERENCES workers(id) ON DELETE SET NULL,
    slot_start       BIGINT,
    slot_end         BIGINT,
    due_at           BIGINT  NOT NULL,
    source           TEXT    NOT NULL,
    created_by       TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    completion_note  TEXT,
    overdue_at       BIGINT
);
CREATE INDEX tickets_tenant ON tickets(tenant_id, id);
CREATE INDEX tickets_status ON tickets(status, due_at);
CREATE INDEX tickets_worker_slot ON tickets(worker_id, slot_start);
CREATE INDEX tickets_created ON tickets(created_at);

CREATE TABLE ticket_history (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id BIGINT  NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    at        BIGINT  NOT NULL,
    actor     TEXT    NOT NULL,
    field     TEXT    NOT NULL,
    old_value TEXT,
    new_value TEXT
);
CREATE INDEX ticket_history_ticket ON ticket_history(ticket_id, id);

CREATE TABLE ticket_comments (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id BIGINT  NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    at        BIGINT  NOT NULL,
    author    TEXT    NOT NULL,
    text      TEXT    NOT NULL
);
CREATE INDEX ticket_comments_ticket ON ticket_comments(ticket_id, id);

CREATE TABLE ticket_calls (
    ticket_id BIGINT NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    call_id   BIGINT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    PRIMARY KEY (ticket_id, call_id)
);

CREATE TABLE ticket_reminders (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id  BIGINT  NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    remind_at  BIGINT  NOT NULL,
    note       TEXT    NOT NULL DEFAULT '',
    created_by TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    fired_at   BIGINT,
    done_at    BIGINT,
    done_by    TEXT
);
CREATE INDEX ticket_reminders_due ON ticket_reminders(remind_at) WHERE fired_at IS NULL;

-- Staff notifications to one person rather than a `[staff.GROUP]`: their addresses, as JSON
-- ({"phones": [...], "emails": [...], "telegram": [...]}).
ALTER TABLE notifications ADD COLUMN addresses TEXT;
ALTER TABLE notifications ADD COLUMN ticket_id BIGINT REFERENCES tickets(id) ON DELETE SET NULL;
