-- Call queues and operators (hub/src/telephony/queue.rs): when a caller joined a queue, which
-- operator took the call and when the two were connected, and the callback ticket of a caller who gave
-- up. The 5-minute answer figures (decree No. 331) are computed from these. Times are UTC milliseconds.
ALTER TABLE calls ADD COLUMN queued_at BIGINT;
ALTER TABLE calls ADD COLUMN connected_at BIGINT;
ALTER TABLE calls ADD COLUMN operator TEXT;
ALTER TABLE calls ADD COLUMN callback_ticket BIGINT;
CREATE INDEX calls_queued ON calls(queued_at);
