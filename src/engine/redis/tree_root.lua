local epoch = tonumber(ARGV[1])
local rooted = redis.call('LLEN', KEYS[1])
if epoch <= rooted then
  if redis.call('LINDEX', KEYS[1], epoch - 1) == ARGV[2] then
    return 0
  end
  return redis.error_reply('FORK epoch ' .. epoch .. ' has another root already')
end
local written = tonumber(redis.call('GET', KEYS[2]) or '0')
if written < epoch then
  return redis.error_reply('BEHIND epoch ' .. epoch .. ' is not written here (the directory holds epoch ' .. written .. ')')
end
if epoch ~= rooted + 1 then
  return redis.error_reply('GAP epoch ' .. epoch .. ' does not follow the last rooted epoch ' .. rooted)
end
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1
