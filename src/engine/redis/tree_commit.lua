if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the publisher lease is not held')
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = tonumber(ARGV[2])
if current ~= epoch - 1 then
  return redis.error_reply('FENCED the directory is at epoch ' .. current)
end
local nodes = tonumber(ARGV[3])
local i = 4
for _ = 1, nodes do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  local before = redis.call('HGET', KEYS[4], ARGV[i]) or ''
  redis.call('HSET', KEYS[4], ARGV[i], before .. ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[2], epoch)
return epoch
