-- Campaign dispatch (hub/src/campaigns/): templates, schedule, quiet hours, retry policy and results per
-- campaign; per contact a persisted state machine (queued -> sending with a lease -> sent | delivered |
-- answered | confirmed | failed | cancelled) with the channel plan, attempts and the operators' call
-- list; every send attempt is a row of campaign_attempts. Times are UTC milliseconds.
ALTER TABLE campaigns ADD COLUMN templates TEXT NOT NULL DEFAULT '{}';
ALTER TABLE campaigns ADD COLUMN variables TEXT NOT NULL DEFAULT '{}';
ALTER TABLE campaigns ADD COLUMN retry TEXT NOT NULL DEFAULT '{}';
ALTER TABLE campaigns ADD COLUMN starts_at BIGINT;
ALTER TABLE campaigns ADD COLUMN deadline_at BIGINT;
ALTER TABLE campaigns ADD COLUMN estimated_finish_at BIGINT;
ALTER TABLE campaigns ADD COLUMN deadline_at_risk BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN override_quiet_hours BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN handover_at BIGINT;
ALTER TABLE campaigns ADD COLUMN finished_at BIGINT;

ALTER TABLE campaign_contacts ADD COLUMN plan TEXT NOT NULL DEFAULT '[]';
ALTER TABLE campaign_contacts ADD COLUMN step BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_contacts ADD COLUMN channel TEXT;
ALTER TABLE campaign_contacts ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_contacts ADD COLUMN channel_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_contacts ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_contacts ADD COLUMN lease_until BIGINT;
ALTER TABLE campaign_contacts ADD COLUMN hold_until BIGINT;
ALTER TABLE campaign_contacts ADD COLUMN operator_result TEXT;
ALTER TABLE campaign_contacts ADD COLUMN operator_at BIGINT;
ALTER TABLE campaign_contacts ADD COLUMN reached_via TEXT;
ALTER TABLE campaign_contacts ADD COLUMN reason TEXT;
ALTER TABLE campaign_contacts ADD COLUMN vars TEXT;
ALTER TABLE campaign_contacts ADD COLUMN finished_at BIGINT;
-- The dispatcher's claim (queued contacts of a campaign and channel in calling order), a campaign's
-- open contacts, and the settling of expired leases.
CREATE INDEX campaign_contacts_due ON campaign_contacts(campaign_id, status, channel, id);
CREATE INDEX campaign_contacts_status ON campaign_contacts(status, lease_until);

CREATE TABLE campaign_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id  BIGINT  NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    contact_id   BIGINT  NOT NULL REFERENCES campaign_contacts(id) ON DELETE CASCADE,
    channel      TEXT    NOT NULL,
    route        TEXT    NOT NULL,
    started_at   BIGINT  NOT NULL,
    finished_at  BIGINT  NOT NULL,
    outcome      TEXT    NOT NULL,
    detail       TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX campaign_attempts_contact ON campaign_attempts(contact_id, id);
CREATE INDEX campaign_attempts_campaign ON campaign_attempts(campaign_id, id);
