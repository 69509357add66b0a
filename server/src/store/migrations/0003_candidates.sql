-- Candidates chosen by execution (the loop of issue 16): each distinct
-- candidate is an attempt of a round, with how many samples produced it and
-- whether the greedy one did; each test result keeps the canonical outcome
-- candidates are clustered by; each round's selection is kept with its reason.
ALTER TABLE attempts ADD COLUMN round INTEGER;
ALTER TABLE attempts ADD COLUMN weight INTEGER;
ALTER TABLE attempts ADD COLUMN greedy INTEGER;
ALTER TABLE test_results ADD COLUMN outcome TEXT;
CREATE TABLE selections (
    id             INTEGER PRIMARY KEY,
    task           INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    round          INTEGER NOT NULL,
    chosen_attempt INTEGER REFERENCES attempts (id) ON DELETE SET NULL,
    passes_gate    INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    -- pipeline::select::Selection as JSON, candidate indices mapped to attempt ids.
    detail_json    TEXT    NOT NULL,
    created_ms     INTEGER NOT NULL
);
CREATE INDEX selections_task ON selections (task, round);
