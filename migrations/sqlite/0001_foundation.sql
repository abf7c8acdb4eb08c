-- Foundation data model (SQLite). Times are UTC milliseconds since the epoch (BIGINT) so that the
-- same queries run on SQLite and PostgreSQL; booleans are 0/1 integers for the same reason.

CREATE TABLE tenants (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id    TEXT    NOT NULL UNIQUE,
    name           TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    time_zone      TEXT    NOT NULL,
    business_hours TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL
);

CREATE TABLE sites (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    external_id TEXT    NOT NULL,
    parent_id   BIGINT  REFERENCES sites(id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    address     TEXT    NOT NULL DEFAULT '',
    UNIQUE (tenant_id, external_id)
);
CREATE INDEX sites_parent ON sites(parent_id);

CREATE TABLE supply_points (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    external_id TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    site_id     BIGINT  REFERENCES sites(id) ON DELETE SET NULL,
    UNIQUE (tenant_id, external_id)
);

-- The supply network as a graph: a supply point feeds other supply points and sites.
CREATE TABLE supply_links (
    from_point_id BIGINT NOT NULL REFERENCES supply_points(id) ON DELETE CASCADE,
    to_point_id   BIGINT REFERENCES supply_points(id) ON DELETE CASCADE,
    to_site_id    BIGINT REFERENCES sites(id) ON DELETE CASCADE,
    CHECK ((to_point_id IS NULL) <> (to_site_id IS NULL))
);
CREATE INDEX supply_links_from ON supply_links(from_point_id);
CREATE UNIQUE INDEX supply_links_point ON supply_links(from_point_id, to_point_id) WHERE to_point_id IS NOT NULL;
CREATE UNIQUE INDEX supply_links_site ON supply_links(from_point_id, to_site_id) WHERE to_site_id IS NOT NULL;

CREATE TABLE consumers (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id          BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    external_id        TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    phones             TEXT    NOT NULL DEFAULT '[]',
    email              TEXT,
    telegram           TEXT,
    preferred_channels TEXT    NOT NULL DEFAULT '[]',
    opt_out            TEXT    NOT NULL DEFAULT '[]',
    account_number     TEXT,
    language           TEXT    NOT NULL DEFAULT 'ru',
    life_support       BIGINT  NOT NULL DEFAULT 0,
    social_object      BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, external_id)
);
CREATE INDEX consumers_account ON consumers(account_number);

CREATE TABLE consumer_sites (
    consumer_id BIGINT NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
    site_id     BIGINT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    PRIMARY KEY (consumer_id, site_id)
);
CREATE INDEX consumer_sites_site ON consumer_sites(site_id, consumer_id);

CREATE TABLE sensors (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id         BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    external_id       TEXT    NOT NULL UNIQUE,
    kind              TEXT    NOT NULL,
    unit              TEXT    NOT NULL DEFAULT '',
    site_id           BIGINT  REFERENCES sites(id) ON DELETE SET NULL,
    supply_point_id   BIGINT  REFERENCES supply_points(id) ON DELETE SET NULL,
    offline_after_s   BIGINT  NOT NULL DEFAULT 300,
    last_value        DOUBLE PRECISION,
    last_at           BIGINT
);

CREATE TABLE readings (
    sensor_id BIGINT NOT NULL REFERENCES sensors(id) ON DELETE CASCADE,
    at        BIGINT NOT NULL,
    value     DOUBLE PRECISION NOT NULL
);
CREATE INDEX readings_sensor_at ON readings(sensor_id, at);
CREATE INDEX readings_at ON readings(at);

CREATE TABLE outages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    external_id     TEXT,
    kind            TEXT    NOT NULL,
    utility         TEXT    NOT NULL,
    supply_point_id BIGINT  REFERENCES supply_points(id) ON DELETE SET NULL,
    status          TEXT    NOT NULL,
    reason          TEXT    NOT NULL DEFAULT '',
    starts_at       BIGINT  NOT NULL,
    expected_end    BIGINT,
    actual_end      BIGINT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    UNIQUE (tenant_id, external_id)
);
CREATE INDEX outages_status ON outages(status);

CREATE TABLE outage_sites (
    outage_id BIGINT NOT NULL REFERENCES outages(id) ON DELETE CASCADE,
    site_id   BIGINT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    PRIMARY KEY (outage_id, site_id)
);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    tenant_id     BIGINT  REFERENCES tenants(id) ON DELETE CASCADE,
    disabled      BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL
);

-- Session cookies and API bearer tokens; only a SHA-256 of the token is stored.
CREATE TABLE sessions (
    token_hash TEXT    PRIMARY KEY,
    user_id    BIGINT  NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT  NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    object_type TEXT    NOT NULL,
    object_id   TEXT    NOT NULL,
    details     TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Journal of the bus events that must not be lost (everything but raw readings, which have their table).
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      BIGINT  NOT NULL,
    source  TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    payload TEXT    NOT NULL
);
CREATE INDEX events_at ON events(at);
