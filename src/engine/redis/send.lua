#!lua
local capacity, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local share, share_bytes, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local pool, pool_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
local slack = math.floor(ttl / 64)
local format = string.format
local function refuse(user, why)
  if redis.call('HEXISTS', user, 'publicKey') == 0 then return -1 end
  return why
end
local function send(user, inbox, shares, contacts, envelope, channel, sender, prefix, conn, generation)
  local size = string.len(envelope)
  local kn, kb, ks = 'n:' .. sender, 'b:' .. sender, 's:' .. sender
  local held = redis.call('HMGET', shares, kn, kb, 'bytes', 'x', ks, 'sn', 'sb')
  local n, b, total = (held[1] or 0) + 0, (held[2] or 0) + 0, (held[3] or 0) + 0
  local waiting = redis.call('XLEN', inbox)
  if waiting >= capacity or total + size > max_bytes then return refuse(user, -2) end
  if (share > 0 and n >= share) or (share_bytes > 0 and b + size > share_bytes) then return refuse(user, -3) end
  local sn, sb, refreshed = (held[6] or 0) + 0, (held[7] or 0) + 0, tonumber(held[4])
  local stranger = pool > 0 and redis.call('SISMEMBER', contacts, sender) == 0
  local pooled = {}
  if stranger then
    if n >= math.max(math.floor(pool / 8), 1) or b + size > math.floor(pool_bytes / 8) then return refuse(user, -3) end
    if sn >= pool or sb + size > pool_bytes then return refuse(user, -5) end
    pooled = {ks, '1', 'sn', format('%d', sn + 1), 'sb', format('%d', sb + size)}
  elseif held[5] then
    pooled = {'sn', format('%d', math.max(sn - n, 0)), 'sb', format('%d', math.max(sb - b, 0))}
  end
  local seq = redis.call('HINCRBY', user, 'seq', '1')
  if seq == 1 and redis.call('HEXISTS', user, 'publicKey') == 0 then
    redis.call('DEL', user)
    return -1
  end
  if held[5] and not stranger then redis.call('HDEL', shares, ks) end
  local number = format('%d', seq)
  local id = redis.call('XADD', inbox, '*', 'e', envelope, 's', number, 'f', sender, 'p', prefix)
  local now = string.match(id, '^%d+') + 0
  if refreshed and now >= refreshed and now - refreshed < slack then
    redis.call('HSET', shares, kn, format('%d', n + 1), kb, format('%d', b + size), 'p:' .. sender, prefix, 'bytes', format('%d', total + size), unpack(pooled))
  else
    redis.call('HSET', shares, kn, format('%d', n + 1), kb, format('%d', b + size), 'p:' .. sender, prefix, 'bytes', format('%d', total + size), 'x', format('%d', now), unpack(pooled))
    redis.call('PEXPIRE', inbox, ttl + slack)
    redis.call('PEXPIRE', shares, ttl + slack)
  end
  if generation ~= '' and redis.pcall('GET', conn) == generation then return {id, seq} end
  redis.call('PUBLISH', channel, $DOORBELL)
  return id
end
local replies = {}
for i = 1, #KEYS / 4 do
  local k, a = 4 * i - 3, 6 * i + 2
  local ok, reply = pcall(send, KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
  if ok then
    replies[i] = reply
  elseif type(reply) == 'table' and reply.err then
    replies[i] = {-4, reply.err}
  else
    replies[i] = {-4, tostring(reply)}
  end
end
return replies
