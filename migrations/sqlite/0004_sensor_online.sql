-- Whether a sensor is currently reporting: set by the hub when it goes silent longer than its
-- offline_after_s (or its Modbus device is down) and when it speaks again, so a restart of the hub
-- resumes from the state it had.
ALTER TABLE sensors ADD COLUMN online BIGINT NOT NULL DEFAULT 0;
