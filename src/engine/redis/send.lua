
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local size = string.len(ARGV[1])
local held = redis.call('HMGET', KEYS[3], 'n:' .. ARGV[5], 'b:' .. ARGV[5], 'bytes')
local n, b, total = tonumber(held[1]) or 0, tonumber(held[2]) or 0, tonumber(held[3]) or 0
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[2]) or total + size > tonumber(ARGV[8]) then return -2 end
local share, share_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
if (share > 0 and n >= share) or (share_bytes > 0 and b + size > share_bytes) then return -3 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1], 's', seq, 'f', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[5], 1)
redis.call('HINCRBY', KEYS[3], 'b:' .. ARGV[5], size)
redis.call('HINCRBY', KEYS[3], 'bytes', size)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[4], $DOORBELL)
return id
