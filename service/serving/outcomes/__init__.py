"""Outcomes: the events that cite an answer's rec_id, attributed to the model (or experiment
arm) that showed the item, its position and popularity group, and read back as rates per
1,000 exposures with intervals and, between two arms, an always-valid test
(GET /v1/serving/outcomes, the unkd_outcomes_* series of /metrics, the exposure page).

The path of an outcome:
1. Every answer gets a rec_id (service/serving/answers.py) and hands it, with the user of each
   list, to its model's exposure Tally: one deque append, the same as before.
2. The exposure flusher writes a rec record per answer (`recs`: a Redis hash, one field per
   list, 1 h TTL) in its once-a-second batch.
3. POST /v1/events stores events in one Redis Stream (keys.events_stream). A consumer thread
   per API process (`consumer`) reads it in one consumer group, so each event is handled by
   one process; it looks the rec record up, decides the event (`attribution`), and counts and
   acknowledges it in one Lua script: exactly once.
4. `reader` sums the counters of the window's 10-s buckets and of the epoch next to the
   exposure counts of the same models, and `stats` computes Wilson intervals and the mSPRT
   comparison of two arms.

Counters live beside exposure's, per model and serving epoch (keys.outcomes_*): an arm's
epoch is its experiment's start (or the active model's publish when the arm is the active
model), so an experiment's arms are compared over the same span.
"""
