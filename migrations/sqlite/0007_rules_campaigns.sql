-- Rule state (each rule's persistent map and pending timers) so that a restart resumes.
CREATE TABLE rule_state (
    rule       TEXT    PRIMARY KEY,
    state      TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL
);

-- Notification campaigns: who is to be told what. Delivery by channel is the campaigns issue's work;
-- here a campaign is its audience resolved into one contact per consumer, life support and social
-- objects first (for human operators).
CREATE TABLE campaigns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   BIGINT  NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    template    TEXT    NOT NULL DEFAULT '',
    channels    TEXT    NOT NULL DEFAULT '[]',
    audience    TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    contacts    BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX campaigns_tenant ON campaigns(tenant_id, id);

CREATE TABLE campaign_contacts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id  BIGINT  NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    consumer_id  BIGINT  NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
    priority     BIGINT  NOT NULL,
    status       TEXT    NOT NULL,
    updated_at   BIGINT  NOT NULL,
    UNIQUE (campaign_id, consumer_id)
);
CREATE INDEX campaign_contacts_order ON campaign_contacts(campaign_id, priority, id);
