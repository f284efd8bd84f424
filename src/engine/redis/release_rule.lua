local function release(key, field, change)
  if redis.call('HINCRBY', key, field, change) == change + 0 and redis.call('PTTL', key) == -1 and redis.call('HLEN', key) == 1 then redis.call('DEL', key) end
end
