#!lua flags=allow-oom
if redis.call('EXISTS', KEYS[1]) == 0 then
  local clock = redis.call('TIME')
  redis.call('SET', KEYS[1], tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
end
local generation = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[1], $DOORBELL)
return generation
