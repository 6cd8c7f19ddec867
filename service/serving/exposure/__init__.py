"""Live exposure: what the served models show, counted as they answer and summed over every
API process in Redis (GET /v1/serving/exposure, the unkd_exposure_* series of /metrics).

What counts. Every answered recommendation list (the single-user GET and its fallback lists,
by-history, each user of a batch POST) adds, under the model that produced it: one answer,
its filled slots, its slots per popularity group, a count for each of its items, its mean
training popularity (ARP), and the handler's latency (one observation per HTTP answer and
model: a batch answered by two arms counts once for each). Similar-items lists are not
counted: they rank items against an item, which the offline report does not measure.

Count in memory, add up in Redis; four modules:
- `counts`: the pure logic: the counters of a span (`Counts`), an answer batch aggregated
  into them, buckets of the window, the figures of a span.
- `counter`: the hot path's `Tally` (one deque append per answer) and the per-process
  `ExposureCounter`, whose flusher thread writes the deltas to Redis.
- `delta`: one delta written by its token at most once, however often a failed flush sends
  it again (one Lua script).
- `reader`: `ExposureReader`, the summed counts of the served models read back for the route
  and /metrics, next to each model's offline report.

Epochs. A model's counts belong to its serving epoch (`since`): the active model's begins
at its publish (the pointer's published_at), an arm's at its experiment's start, except an
arm that is the active model, whose epoch runs on. A new publish starts a new epoch, so
`since_publish` (and the window) start again from zero; the old keys expire. The keys of an
epoch are built by service.core.keys (exposure_*).
"""
