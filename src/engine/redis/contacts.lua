#!lua
local ttl, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = redis.call('SCARD', KEYS[1])
for i = 3, #ARGV do
  if n >= max then break end
  n = n + redis.call('SADD', KEYS[1], ARGV[i])
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return n
