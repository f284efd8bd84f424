#!lua flags=allow-oom
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local dims = (#ARGV - 1) / 4
local state = redis.call('HMGET', KEYS[1], 'at', 't1', 't2')
local at = tonumber(state[1]) or now
local elapsed = math.max(0, now - at)
local tokens, wait = {}, 0
for i = 1, dims do
  local burst, rate, min = tonumber(ARGV[4 * i - 2]), tonumber(ARGV[4 * i - 1]), tonumber(ARGV[4 * i + 1])
  local t = math.min(burst, (tonumber(state[i + 1]) or burst) + elapsed * rate / 1000)
  tokens[i] = t
  if t < min then wait = math.max(wait, math.ceil((min - t) * 1000 / rate)) end
end
local reply = {1}
if wait > 0 then
  reply = {0, wait}
else
  for i = 1, dims do
    local want, min = tonumber(ARGV[4 * i]), tonumber(ARGV[4 * i + 1])
    local granted = math.max(min, math.min(want, math.floor(tokens[i])))
    tokens[i] = tokens[i] - granted
    reply[i + 1] = granted
  end
end
redis.call('HSET', KEYS[1], 'at', math.max(now, at), 't1', tostring(tokens[1]), 't2', tostring(tokens[2] or 0))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return reply
