-- Telephony, second slice: outbound calls (why the call exists, the detail of its outcome), the
-- registrar's SIP accounts (HA1 only, never the password) and the phones' registrations (kept across
-- restarts until they expire).

ALTER TABLE calls ADD COLUMN purpose TEXT;
ALTER TABLE calls ADD COLUMN detail TEXT;

CREATE TABLE sip_accounts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT    NOT NULL UNIQUE,
    realm       TEXT    NOT NULL,
    ha1         TEXT    NOT NULL,
    user_id     BIGINT  NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE sip_registrations (
    username    TEXT    NOT NULL REFERENCES sip_accounts(username) ON DELETE CASCADE,
    contact     TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    transport   TEXT    NOT NULL,
    user_agent  TEXT,
    expires_at  BIGINT  NOT NULL,
    PRIMARY KEY (username, contact)
);
