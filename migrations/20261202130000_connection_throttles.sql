-- Adaptive throttling: a connection's state after its server's last throttling reply
-- (421 4.3.2, 451 4.7.x "rate", 450 4.2.1...). One row per connection ever throttled;
-- the limits in effect are computed from it and the clock (src/domain/throttle.rs),
-- so recovery needs no writes. Every worker reads the table at its heartbeat.
CREATE TABLE connection_throttles (
    connection    text             PRIMARY KEY,
    fraction      double precision NOT NULL CHECK (fraction > 0 AND fraction <= 1),
    paused_until  timestamptz      NOT NULL,
    last_code     integer          NOT NULL,
    last_enhanced text,
    last_text     text             NOT NULL,
    last_at       timestamptz      NOT NULL,
    replies       bigint           NOT NULL
);
