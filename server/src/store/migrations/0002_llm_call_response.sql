-- The model's reply text of each LLM call (at most 16 KiB), so a broken or
-- surprising output can be read back after the fact.
ALTER TABLE llm_calls ADD COLUMN response TEXT;
