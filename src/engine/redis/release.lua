#!lua flags=allow-oom
for i = 1, #KEYS do
  if redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]) == tonumber(ARGV[2 * i]) and redis.call('PTTL', KEYS[i]) == -1 and redis.call('HLEN', KEYS[i]) == 1 then redis.call('DEL', KEYS[i]) end
end
return #KEYS
