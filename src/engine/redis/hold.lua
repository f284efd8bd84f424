#!lua
local day, keep, want, allowed, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fields = redis.call('HGETALL', KEYS[1])
local held, old = 0, {}
for i = 1, #fields, 2 do
  local d = tonumber(string.sub(fields[i], 2))
  if d and d >= day - keep then held = held + tonumber(fields[i + 1]) else old[#old + 1] = fields[i] end
end
if #old > 0 then redis.call('HDEL', KEYS[1], unpack(old)) end
if held < 0 then held = 0 end
if want > 0 and held + want > allowed then return {0, held} end
if want ~= 0 then redis.call('HINCRBY', KEYS[1], 'd' .. day, want) end
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, held + want}
