#!lua flags=allow-oom
local removed = 0
for i = 1, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if entry then
    local fields, from, size = entry[2], nil, 0
    for j = 1, #fields, 2 do
      if fields[j] == 'f' then from = fields[j + 1] elseif fields[j] == 'e' then size = string.len(fields[j + 1]) end
    end
    removed = removed + redis.call('XDEL', KEYS[1], ARGV[i])
    if from then
      if redis.call('HINCRBY', KEYS[2], 'n:' .. from, -1) <= 0 then
        redis.call('HDEL', KEYS[2], 'n:' .. from, 'b:' .. from)
      else
        redis.call('HINCRBY', KEYS[2], 'b:' .. from, -size)
      end
      if redis.call('HINCRBY', KEYS[2], 'bytes', -size) <= 0 then redis.call('HDEL', KEYS[2], 'bytes') end
    end
  end
end
return removed
