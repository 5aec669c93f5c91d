"""The Lua scripts of the Redis job store (service/jobs/redisstore.py), each one atomic step.

Every script names the keys it is given (KEYS) and its arguments (ARGV). Some touch keys derived
from a prefix instead of given ones, which is why the store needs one Redis, not a cluster. Lease
clocks read Redis's own TIME, so replicas' clocks never have to agree.
"""

from __future__ import annotations

from collections.abc import Mapping

# KEYS: queue, job hash, events, owned set, waiting counts. ARGV: capacity, job id, created,
# principal, snapshot, accepted event, deadline, the principal's cap on waiting jobs (0: none),
# then the entry's field/value pairs. Returns the place in line, nil when the line is full, -1
# when the principal has its cap of jobs waiting.
ENQUEUE = """
local waiting = redis.call('XLEN', KEYS[1])
if waiting >= tonumber(ARGV[1]) then return false end
local cap = tonumber(ARGV[8])
if cap > 0 and tonumber(redis.call('HGET', KEYS[5], ARGV[4]) or '0') >= cap then return -1 end
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
local entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'principal', ARGV[4], 'snapshot', ARGV[5], 'entry', entry,
           'queue', KEYS[1], 'deadline', ARGV[7])
redis.call('XADD', KEYS[3], '1-0', 'event', ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return waiting
"""

# KEYS: queue, waiting counts, running. ARGV: most jobs, entries to scan, key prefix, replica,
# lease ms. Takes the head of the line (the oldest job of the principal whose last job was taken
# longest ago: callers take turns) and the jobs with the same non-empty batch key, deletes them
# from the line, and leases them to the replica: each job's generation goes up (the fence its
# writes carry), its request is kept in its hash (for a resume) and it joins `running` with its
# lease's expiry (Redis's clock). Returns {entry id, fields, generation, run} each; `attempts`
# counts the runs that count against max_job_runs (a hand-off gives one back).
TAKE = """
local clock = redis.call('TIME')
local expiry = clock[1] * 1000 + math.floor(clock[2] / 1000) + tonumber(ARGV[5])
local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return ''
end
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
if #entries == 0 then return {} end
-- Fair between callers: the head is the oldest job of the principal served longest ago.
local served = ARGV[3] .. 'served'
local head, oldest = 1, nil
for i, entry in ipairs(entries) do
  local last = tonumber(redis.call('HGET', served, field(entry, 'principal')) or '-1')
  if oldest == nil or last < oldest then head, oldest = i, last end
end
redis.call('HSET', served, field(entries[head], 'principal'), expiry)
local want = field(entries[head], 'batch')
local order = {entries[head]}
if want ~= '' then
  for i, entry in ipairs(entries) do
    if i ~= head and field(entry, 'batch') == want then order[#order + 1] = entry end
  end
end
local most, taken = tonumber(ARGV[1]), {}
for _, entry in ipairs(order) do
  if #taken >= most then break end
  local job, principal = field(entry, 'job'), field(entry, 'principal')
  redis.call('XDEL', KEYS[1], entry[1])
  local key = ARGV[3] .. 'job:' .. job
  redis.call('HDEL', key, 'entry')
  if redis.call('HINCRBY', KEYS[2], principal, -1) <= 0 then redis.call('HDEL', KEYS[2], principal) end
  local generation = redis.call('HINCRBY', key, 'generation', 1)
  redis.call('HINCRBY', key, 'attempts', 1)
  local run = redis.call('HINCRBY', key, 'runs', 1)
  redis.call('HSET', key, 'owner', ARGV[4])
  local fields = entry[2]
  for i = 1, #fields, 2 do redis.call('HSET', key, 'f:' .. fields[i], fields[i + 1]) end
  redis.call('ZADD', KEYS[3], expiry, job)
  taken[#taken + 1] = {entry[1], entry[2], generation, run}
end
return taken
"""

# KEYS: job hash, waiting counts. Takes a waiting job out of its line; 1 when this call did (and
# so ends it).
UNQUEUE = """
local entry = redis.call('HGET', KEYS[1], 'entry')
if not entry then return 0 end
redis.call('HDEL', KEYS[1], 'entry')
local removed = redis.call('XDEL', redis.call('HGET', KEYS[1], 'queue'), entry)
if removed == 1 then
  local principal = redis.call('HGET', KEYS[1], 'principal')
  if redis.call('HINCRBY', KEYS[2], principal, -1) <= 0 then redis.call('HDEL', KEYS[2], principal) end
end
return removed
"""

# KEYS: job hash. The number of jobs ahead of a waiting one; -1 when it is not waiting.
POSITION = """
local entry = redis.call('HGET', KEYS[1], 'entry')
if not entry then return -1 end
return #redis.call('XRANGE', redis.call('HGET', KEYS[1], 'queue'), '-', '(' .. entry)
"""

# KEYS: job hash. ARGV: field, value. Sets a field of a job's hash, unless the job is gone.
MARK = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""

# Delete a key only while it still names the job that claimed it.
RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: running, job hash. ARGV: job id, generation, lease ms. Extends the lease of a job this
# generation still holds: 1, or 0 when another replica has taken it over since.
RENEW = """
if tonumber(redis.call('HGET', KEYS[2], 'generation') or '0') ~= tonumber(ARGV[2]) then return 0 end
local clock = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', clock[1] * 1000 + math.floor(clock[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: job hash, events, running, checkpoint. ARGV: generation, sequence (0: the snapshot alone), field,
# value, snapshot, events kept, 1 when the event is the job's last, job id. Writes a running
# job's event and snapshot only for the generation that holds the job (-1 otherwise: the writer
# has been fenced off); an event at or below the newest sequence is already there (a retry).
WRITE = """
if tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') ~= tonumber(ARGV[1]) then return -1 end
local sequence = tonumber(ARGV[2])
if sequence > 0 then
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local last = 0
  if #newest > 0 then last = tonumber(string.match(newest[1][1], '^(%d+)')) end
  if sequence > last then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], sequence .. '-0', ARGV[3], ARGV[4])
  end
end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[5])
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[8])
  redis.call('DEL', KEYS[4])
  redis.call('HDEL', KEYS[1], 'owner')
  for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(name, 1, 2) == 'f:' then redis.call('HDEL', KEYS[1], name) end
  end
end
return 1
"""

# KEYS: job hash, checkpoint. ARGV: generation, then the checkpoint's field/value pairs. Replaces
# the job's checkpoint, for the generation that holds a job still running (1), else -1.
SAVE = """
if tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') ~= tonumber(ARGV[1]) then return -1 end
if redis.call('HEXISTS', KEYS[1], 'f:request') == 0 then return -1 end
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Puts a leased job back in its line from the request its hash kept, marked with why, fenced off
# from its previous run (generation up); counted in its principal's waiting jobs.
REQUEUE = """
local function requeue(key, waiting, why)
  local generation = redis.call('HINCRBY', key, 'generation', 1)
  redis.call('HDEL', key, 'owner')
  local fields = {}
  -- No batch key: a resumed job is out of step with any other, so it runs alone.
  for _, name in ipairs({'job', 'kind', 'request', 'principal', 'key', 'fingerprint', 'deadline',
                         'created', 'request_id'}) do
    local value = redis.call('HGET', key, 'f:' .. name)
    if value then
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
  end
  fields[#fields + 1] = 'resumed'
  fields[#fields + 1] = why
  local entry = redis.call('XADD', redis.call('HGET', key, 'queue'), '*', unpack(fields))
  redis.call('HSET', key, 'entry', entry)
  redis.call('HINCRBY', waiting, redis.call('HGET', key, 'principal'), 1)
  return generation
end
"""

# KEYS: running, waiting counts. ARGV: key prefix, most runs a job gets, most jobs. Jobs whose
# lease has expired (their replica died, hung, or lost Redis for a whole lease) go back to their
# line; a job that has had its last run does not: it is fenced off and returned to be ended.
# Returns {{job, generation}...} twice: the requeued and the spent.
RECLAIM = (
    REQUEUE
    + """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local requeued, spent = {}, {}
for _, job in ipairs(expired) do
  redis.call('ZREM', KEYS[1], job)
  local key = ARGV[1] .. 'job:' .. job
  if redis.call('HEXISTS', key, 'f:request') == 1 then
    if tonumber(redis.call('HGET', key, 'attempts') or '0') >= tonumber(ARGV[2]) then
      spent[#spent + 1] = {job, redis.call('HINCRBY', key, 'generation', 1)}
    else
      requeued[#requeued + 1] = {job, requeue(key, KEYS[2], 'LEASE_EXPIRED')}
    end
  end
end
return {requeued, spent}
"""
)

# KEYS: job hash, running, waiting counts. ARGV: generation, job id. A draining replica hands a
# job it still holds back to the line (a hand-off is not a failed run: its attempt is given back).
# 1 when it did, 0 when the job was no longer this generation's.
HANDOFF = (
    REQUEUE
    + """
if tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
requeue(KEYS[1], KEYS[3], 'HANDED_OFF')
return 1
"""
)


def flat(fields: Mapping[str, str | bytes]) -> list[str | bytes]:
    """Field/value pairs as one list, as Redis commands and these scripts take them."""
    return [item for pair in fields.items() for item in pair]
