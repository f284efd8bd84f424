
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local size = string.len(ARGV[1])
local sender = ARGV[5]
local held = redis.call('HMGET', KEYS[3], 'n:' .. sender, 'b:' .. sender, 'bytes', 'x')
local n, b, total = tonumber(held[1]) or 0, tonumber(held[2]) or 0, tonumber(held[3]) or 0
local waiting = redis.call('XLEN', KEYS[2])
if waiting >= tonumber(ARGV[2]) or total + size > tonumber(ARGV[8]) then return -2 end
local share, share_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
if (share > 0 and n >= share) or (share_bytes > 0 and b + size > share_bytes) then return -3 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1], 's', seq, 'f', sender)
local ttl = tonumber(ARGV[3])
local slack = math.floor(ttl / 64)
local now = tonumber(string.match(id, '^%d+'))
local refreshed = tonumber(held[4])
if waiting > 0 and refreshed and now >= refreshed and now - refreshed < slack then
  redis.call('HSET', KEYS[3], 'n:' .. sender, n + 1, 'b:' .. sender, b + size, 'bytes', total + size)
else
  redis.call('HSET', KEYS[3], 'n:' .. sender, n + 1, 'b:' .. sender, b + size, 'bytes', total + size, 'x', now)
  redis.call('PEXPIRE', KEYS[2], ttl + slack)
  redis.call('PEXPIRE', KEYS[3], ttl + slack)
end
redis.call('PUBLISH', ARGV[4], $DOORBELL)
return id
