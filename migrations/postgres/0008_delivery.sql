-- Delivery of the staff notification outbox by the channels (hub/src/delivery.rs). A worker claims a
-- row by setting status `sending` with a lease; a row whose lease ran out (the hub stopped mid-send) is
-- claimed again. Times are UTC milliseconds.
ALTER TABLE notifications ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN last_error TEXT;
ALTER TABLE notifications ADD COLUMN delivered_at BIGINT;
ALTER TABLE notifications ADD COLUMN delivered_via TEXT;
ALTER TABLE notifications ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE notifications ADD COLUMN lease_until BIGINT;
