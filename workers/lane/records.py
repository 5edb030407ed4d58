"""The lane's stats records: the same records on the same stream as every job's, appended by
the write-behind thread in one command per batch.

One ``XADD`` per record from redis-py costs the worker ~20 us of Python per request (the
pipeline's command, its packing, its reply), a tenth of a small model's forward. Here each
record travels as one NUL-separated string and a short Lua script splits it and adds it,
server-side, for the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

from redis.client import Pipeline

from shared.names import KEY_STATS
from workers.writebehind import Write

SEP = "\x00"
# KEYS[1]: the stats stream. ARGV[1]: its approximate cap; ARGV[2..]: one record each, its
# fields and values joined by NUL.
APPEND_SCRIPT = """
local last = nil
for i = 2, #ARGV do
  local record, fields, start = ARGV[i], {}, 1
  while true do
    local stop = string.find(record, '\\0', start, true)
    if not stop then
      fields[#fields + 1] = string.sub(record, start)
      break
    end
    fields[#fields + 1] = string.sub(record, start, stop - 1)
    start = stop + 1
  end
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
end
return last
"""


def pack_record(record: dict[str, str]) -> str:
    """One record as one string (a NUL inside a value, from a hostile request, is replaced)."""
    text = SEP.join(chain.from_iterable(record.items()))
    if text.count(SEP) != 2 * len(record) - 1:
        return SEP.join(
            chain.from_iterable(
                (k.replace(SEP, "?"), v.replace(SEP, "?")) for k, v in record.items()
            )
        )
    return text


def append_records(records: Sequence[dict[str, str]], maxlen: int) -> Write:
    """The write of a batch's stats records (``stats_entry`` format) to the capped stream."""
    packed = [pack_record(record) for record in records]

    def write(pipe: Pipeline) -> object:
        # EVAL, not EVALSHA: a restarted Redis has no script cache, and a refused write
        # would go back to the write-behind queue again and again.
        return pipe.eval(APPEND_SCRIPT, 1, KEY_STATS, maxlen, *packed)

    return write
