"""The Lua scripts that move a job from one state to the next, each in one atomic step.

They write what RQ itself writes for the same step (status, registries, times), skipping
what only RQ's own worker needs (its intermediate list, executions), so that RQ's tools read
the jobs as RQ jobs. Every step that ends a run checks the run's *token* (set when the run
was claimed): a run that lost its lease — its node was thought dead and the job was given to
another — cannot overwrite the outcome of the run that replaced it, and the first outcome of
a job wins.

Job keys are built inside the scripts from ids (``ARGV``): fine on one Redis server, which
is what a mesh's control plane is (not a cluster).
"""

from __future__ import annotations

# KEYS: job, queue, rq:queues. ARGV: id, origin (queue name), the job's field/value pairs
# packed as LEN:BYTES each (see intake.pack), the mesh's queue prefix ("PREFIX."), function.
# → 1 when accepted, else the status of the job already under that id (in any lane of the
# function: the same call sent again to another node), or 'conflict' when that job is not
# this function's (another function's, or another mesh's or RQ app's).
ACCEPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  local origin = redis.call('HGET', KEYS[1], 'origin') or ''
  local prefix, fn = ARGV[4], ARGV[5]
  local lane = string.sub(origin, #prefix + 1)
  if string.sub(origin, 1, #prefix) ~= prefix
    or (lane ~= fn and string.sub(lane, 1, #fn + 1) ~= fn .. '@') then
    return 'conflict'
  end
  return status
end
local packed, fields, pos = ARGV[3], {}, 1
while pos <= #packed do
  local colon = string.find(packed, ':', pos, true)
  local size = tonumber(string.sub(packed, pos, colon - 1))
  fields[#fields + 1] = string.sub(packed, colon + 1, colon + size)
  pos = colon + size + 1
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], KEYS[2])
return 1
"""

# KEYS: queue, wip. ARGV: n, job prefix, lease prefix, lease ms, worker name, node,
# now (RQ format), now (epoch), wip score, token prefix.
# → up to n runs: {id, token, attempts, <CLAIMED_FIELDS...>}. Ids of jobs that are no longer
# queued (canceled, settled by a late run) are dropped from the queue on the way.
CLAIM = """
local out = {}
local n = tonumber(ARGV[1])
local popped = 0
while #out < n and popped < n + 64 do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  popped = popped + 1
  local key = ARGV[2] .. id
  if redis.call('HGET', key, 'status') == 'queued' then
    local attempts = redis.call('HINCRBY', key, 'ef_attempts', 1)
    local token = ARGV[10] .. attempts
    redis.call('HSET', key, 'status', 'started', 'started_at', ARGV[7], 'last_heartbeat', ARGV[7],
      'worker_name', ARGV[5], 'ef_node', ARGV[6], 'ef_started', ARGV[8], 'ef_token', token,
      'ended_at', '')
    redis.call('ZADD', KEYS[2], ARGV[9], id .. ':' .. token)
    redis.call('SET', ARGV[3] .. id, token, 'PX', ARGV[4])
    local f = redis.call('HMGET', key, 'ef_fn', 'ef_m', 'ef_p', 'ef_q', 'ef_h', 'ef_b', 'ef_cb',
      'ef_idem', 'ef_age_from', 'retries_left')
    for i = 1, #f do if not f[i] then f[i] = '' end end
    out[#out + 1] = {id, token, attempts, unpack(f)}
  end
end
return out
"""
CLAIMED_FIELDS = (
    "ef_fn",
    "ef_m",
    "ef_p",
    "ef_q",
    "ef_h",
    "ef_b",
    "ef_cb",
    "ef_idem",
    "ef_age_from",
    "retries_left",
)

# KEYS: job, wip, registry (finished, failed or scheduled), lease, queue, callback outbox.
# ARGV: id, token, registry score, ttl seconds (0: keep), when the callback is due (0: none
# now — a retry), then field/value pairs, the first of them the new status. A final outcome
# of a call with a callback URL enters the outbox in the same step, so no callback is lost
# with the node that ran the call. A finished job drops the call's headers and body (its result is
# kept; a failed one keeps them, to be redriven).
# → 1 when this run's outcome was written, 0 when the job is no longer this run's (another
# run took it, or it was settled or canceled). A run whose lease lapsed but whose job was
# not taken again yet still settles it (and takes it off the queue): it did run.
SETTLE = """
if redis.call('HGET', KEYS[1], 'ef_token') ~= ARGV[2] then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('LREM', KEYS[5], 0, ARGV[1])
elseif status ~= 'started' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[7] == 'finished' then redis.call('HDEL', KEYS[1], 'ef_h', 'ef_b') end
if tonumber(ARGV[5]) > 0 and (redis.call('HGET', KEYS[1], 'ef_cb') or '') ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: job, wip, queue, lease. ARGV: id, token.
# A run that never reached a worker goes back to the head of the queue, uncounted.
REQUEUE = """
if redis.call('HGET', KEYS[1], 'ef_token') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'started' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker_name', '', 'ef_node', '')
redis.call('HINCRBY', KEYS[1], 'ef_attempts', -1)
redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: the lease keys of this node's runs. ARGV: lease ms, job prefix, then each run's
# id and token. A lease that lapsed while nobody reaped the run (Redis itself was down, or
# restarted from its file, for longer than a lease) is taken again: the job still names the
# run's token and is still started.
# → the positions (from 1) of the leases that are no longer this node's.
RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  local id, token = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local held = redis.call('GET', key)
  if held == token then
    redis.call('PEXPIRE', key, ARGV[1])
  elseif not held and redis.call('HGET', ARGV[2] .. id, 'ef_token') == token
      and redis.call('HGET', ARGV[2] .. id, 'status') == 'started' then
    redis.call('SET', key, token, 'PX', ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# KEYS: wip, queue, failed, callback outbox. ARGV: job prefix, lease prefix, most lost runs,
# now (RQ format), failed score, failure ttl, now (epoch).
# A run whose lease lapsed was abandoned (its node died or stalled): the job goes back to
# the head of its queue, or — lost that many times in a row — becomes a dead letter.
# → {id, 'queued' | 'dead'} pairs, flattened.
REAP = """
local out = {}
local members = redis.call('ZRANGE', KEYS[1], 0, 999)
for _, member in ipairs(members) do
  local sep = string.find(member, ':', 1, true)
  if not sep then
    redis.call('ZREM', KEYS[1], member)
  else
    local id = string.sub(member, 1, sep - 1)
    local token = string.sub(member, sep + 1)
    if redis.call('GET', ARGV[2] .. id) ~= token then
      redis.call('ZREM', KEYS[1], member)
      local key = ARGV[1] .. id
      if redis.call('HGET', key, 'ef_token') == token
          and redis.call('HGET', key, 'status') == 'started' then
        local lost = redis.call('HINCRBY', key, 'ef_lost', 1)
        if lost >= tonumber(ARGV[3]) then
          redis.call('HSET', key, 'status', 'failed', 'ended_at', ARGV[4], 'ef_ended', ARGV[7],
            'ef_error', 'its node was lost during each of its last ' .. lost .. ' runs')
          redis.call('ZADD', KEYS[3], ARGV[5], id)
          redis.call('EXPIRE', key, ARGV[6])
          if (redis.call('HGET', key, 'ef_cb') or '') ~= '' then
            redis.call('ZADD', KEYS[4], ARGV[7], id)
          end
          out[#out + 1] = id
          out[#out + 1] = 'dead'
        else
          redis.call('HSET', key, 'status', 'queued', 'enqueued_at', ARGV[4],
            'worker_name', '', 'ef_node', '',
            'ef_error', 'its node was lost during the run (the lease lapsed); run again')
          redis.call('LPUSH', KEYS[2], id)
          out[#out + 1] = id
          out[#out + 1] = 'queued'
        end
      end
    end
  end
end
return out
"""

# KEYS: scheduled, queue. ARGV: job prefix, now (epoch), now (RQ format).
# Retries whose time has come go to the tail of the queue. → how many.
PROMOTE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'status') == 'scheduled' then
    redis.call('HSET', key, 'status', 'queued', 'enqueued_at', ARGV[3])
    redis.call('RPUSH', KEYS[2], id)
  end
end
return #ids
"""

# KEYS: job. ARGV: id, now (RQ format), now (epoch), canceled score, ttl, RQ key prefix,
# the mesh's queue-name prefix ("PREFIX."): another mesh's (or RQ app's) job is 'missing'.
# → 'canceled', 'missing', or the status that cannot be canceled.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
local origin = redis.call('HGET', KEYS[1], 'origin') or ''
local lane = string.sub(origin, #ARGV[7] + 1)
if string.sub(origin, 1, #ARGV[7]) ~= ARGV[7]
  or not (string.find(lane, '^[a-z][a-z0-9_%-]*$') or string.find(lane, '^[a-z][a-z0-9_%-]*@')) then
  return 'missing'  -- (a nested prefix's queue "PREFIX.lab.motion" has no lane of this mesh)
end
if status == 'queued' then
  redis.call('LREM', ARGV[6] .. ':queue:' .. origin, 0, ARGV[1])
elseif status == 'scheduled' then
  redis.call('ZREM', ARGV[6] .. ':scheduled:' .. origin, ARGV[1])
else
  return status
end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'ended_at', ARGV[2], 'ef_ended', ARGV[3])
redis.call('ZADD', ARGV[6] .. ':canceled:' .. origin, ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 'canceled'
"""

# KEYS: failed, queue. ARGV: job prefix, retries, now (RQ format), now (epoch), then the ids
# to redrive (none: the oldest 1000). Each goes back to its queue with fresh retries and a
# fresh max age. → how many.
REDRIVE = """
local ids = {}
if #ARGV > 4 then
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', KEYS[1], 0, 999)
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local key = ARGV[1] .. id
    if redis.call('HGET', key, 'status') == 'failed' then
      redis.call('HSET', key, 'status', 'queued', 'retries_left', ARGV[2], 'enqueued_at', ARGV[3],
        'ef_age_from', ARGV[4], 'ef_lost', 0, 'ended_at', '')
      redis.call('PERSIST', key)
      redis.call('RPUSH', KEYS[2], id)
      n = n + 1
    end
  end
end
return n
"""

# KEYS: callback outbox. ARGV: now (epoch), lease until (epoch), most.
# Callbacks due (their first delivery's node died, or gave up at close) are taken for
# another delivery: their due time moves to the lease's end. → the ids.
CLAIM_CALLBACKS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""
