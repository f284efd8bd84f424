#!lua flags=allow-oom
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]) end
end
return #KEYS
