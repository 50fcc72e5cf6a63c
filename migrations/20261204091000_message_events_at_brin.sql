-- The console's overview counts the last hour's events by `at`. Events are only
-- appended, with `at` the time of writing, so `at` follows the rows' physical order
-- and a block-range index (a few pages for millions of rows, next to nothing to keep up
-- on insert) narrows that scan to the newest ranges. Space freed by retention and
-- reused later widens a few ranges; they are only read, never wrong.
-- autosummarize: ranges filled since the last vacuum are summarized as they fill, not
-- read in full on every query until then.
CREATE INDEX message_events_at_brin ON message_events USING brin (at)
    WITH (autosummarize = on);
