"""Interaction files in, interaction files out.

Formats (the `fmt` names):
- "csv", "tsv": delimited text with a header. User and item columns are found by name
  (user, user_id, userId, uid, item, item_id, itemId, movie_id, ...); rating, timestamp
  and split columns are optional.
- "parquet": the same column names, read with pyarrow.
- "recbole": RecBole atomic `.inter` files, a tab-separated header of `name:type` fields
  (`user_id:token item_id:token rating:float timestamp:float`, optional `split:token`).
- "movielens": `u.data` (tab-separated, no header: user item rating timestamp) or
  `ratings.dat` (the same fields separated by `::`).
- "lines": one line per user, `count item item ...`; the user's external id is the
  0-based line number as a string. A blank line is a user without interactions.

Text formats must be UTF-8. External ids always stay strings (surrounding whitespace is
stripped). Delimited files are parsed by pyarrow in C++, so ml-100k reads in milliseconds;
only "lines" is parsed line by line. Every problem, undecodable bytes included, is a
DataError naming the file and the line (or Parquet row) or field.

The package: `schema` (format names, RawInteractions, column names by role), `text`
(UTF-8 check, sniffing lines, locating a bad row), `detect` (format from name or content),
`readers` and `writers`.
"""

from training.formats.detect import detect_format
from training.formats.readers import read_interactions
from training.formats.schema import FORMATS, SPLIT_VALUES, RawInteractions
from training.formats.writers import write_interactions

__all__ = [
    "FORMATS",
    "SPLIT_VALUES",
    "RawInteractions",
    "detect_format",
    "read_interactions",
    "write_interactions",
]
