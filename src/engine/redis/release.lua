#!lua flags=allow-oom
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
end
return #KEYS
