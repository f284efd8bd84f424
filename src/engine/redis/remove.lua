#!lua flags=allow-oom
local function chunks(command, key, list)
  local replies = {}
  for i = 1, #list, 1000 do
    replies[#replies + 1] = redis.call(command, key, unpack(list, i, math.min(i + 999, #list)))
  end
  return replies
end
local ids, seen, senders, counts, sizes, freed = {}, {}, {}, {}, {}, 0
for i = 1, #ARGV do
  local entry = not seen[ARGV[i]] and redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if entry then
    seen[ARGV[i]] = true
    local fields, from, size = entry[2], nil, 0
    for j = 1, #fields, 2 do
      if fields[j] == 'f' then from = fields[j + 1] elseif fields[j] == 'e' then size = string.len(fields[j + 1]) end
    end
    ids[#ids + 1] = ARGV[i]
    if from then
      if not counts[from] then senders[#senders + 1], counts[from], sizes[from] = from, 0, 0 end
      counts[from], sizes[from], freed = counts[from] + 1, sizes[from] + size, freed + size
    end
  end
end
local removed = 0
for _, n in ipairs(chunks('XDEL', KEYS[1], ids)) do removed = removed + n end
if #senders == 0 then return removed end
local fields = {'bytes'}
for _, from in ipairs(senders) do
  fields[#fields + 1], fields[#fields + 2] = 'n:' .. from, 'b:' .. from
end
local held = {}
for _, part in ipairs(chunks('HMGET', KEYS[2], fields)) do
  for _, v in ipairs(part) do held[#held + 1] = v end
end
local set, gone = {}, {}
local total = (tonumber(held[1]) or 0) - freed
if total > 0 then set[#set + 1], set[#set + 2] = 'bytes', total else gone[#gone + 1] = 'bytes' end
for k, from in ipairs(senders) do
  local n = (tonumber(held[2 * k]) or 0) - counts[from]
  if n > 0 then
    set[#set + 1], set[#set + 2] = 'n:' .. from, n
    set[#set + 1], set[#set + 2] = 'b:' .. from, math.max((tonumber(held[2 * k + 1]) or 0) - sizes[from], 0)
  else
    gone[#gone + 1], gone[#gone + 2] = 'n:' .. from, 'b:' .. from
  end
end
chunks('HDEL', KEYS[2], gone)
chunks('HSET', KEYS[2], set)
return removed
