#!lua flags=allow-oom
local ledger = ARGV[1]
local format = string.format
local function num(v) return tonumber(v) or 0 end
$RELEASE
local function chunks(command, key, list)
  local replies = {}
  for i = 1, #list, 1000 do
    replies[#replies + 1] = redis.call(command, key, unpack(list, i, math.min(i + 999, #list)))
  end
  return replies
end
local freed, freed_at, days = {}, {}, {}
local function day_of(id)
  local hundreds = string.match(id, '^(%d+)%d%d%d%d%d%-')
  if not hundreds then return math.floor(tonumber(string.match(id, '^%d+')) / 86400000) end
  local day = days[hundreds]
  if not day then
    day = math.floor(tonumber(hundreds) / 864)
    days[hundreds] = day
  end
  return day
end
local function free(id, prefix, from, size)
  local day = day_of(id)
  local of_day = freed_at[day]
  if not of_day then
    of_day = {}
    freed_at[day] = of_day
  end
  local of_prefix = of_day[prefix]
  if not of_prefix then
    of_prefix = {}
    of_day[prefix] = of_prefix
  end
  local at = of_prefix[from]
  if at then
    freed[at + 3] = freed[at + 3] + size
  else
    of_prefix[from] = #freed + 1
    freed[#freed + 1], freed[#freed + 2], freed[#freed + 3], freed[#freed + 4] = day, prefix, from, size
  end
end
local function remove(inbox, shares, first, last)
  local senders, counts, sizes, freed_bytes, removed, unnamed = {}, {}, {}, 0, 0, {}
  for i = first, last, 3 do
    local id, from, size, prefix = ARGV[i], ARGV[i + 1], ARGV[i + 2] + 0, nil
    if from == '' then
      from, size = nil, 0
      local entry = redis.call('XRANGE', inbox, id, id)[1]
      local fields = entry and entry[2] or {}
      for j = 1, #fields, 2 do
        local f = fields[j]
        if f == 'f' then from = fields[j + 1] elseif f == 'e' then size = string.len(fields[j + 1]) elseif f == 'p' then prefix = fields[j + 1] end
      end
    end
    if redis.call('XDEL', inbox, id) == 1 then
      removed = removed + 1
      if from then
        if not counts[from] then senders[#senders + 1], counts[from], sizes[from] = from, 0, 0 end
        counts[from], sizes[from], freed_bytes = counts[from] + 1, sizes[from] + size, freed_bytes + size
        if prefix then free(id, prefix, from, size) else unnamed[#unnamed + 1] = {id, from, size} end
      end
    end
  end
  if #senders == 0 then return removed end
  local fields = {'bytes', 'sn', 'sb'}
  for _, from in ipairs(senders) do
    fields[#fields + 1], fields[#fields + 2], fields[#fields + 3], fields[#fields + 4] = 'n:' .. from, 'b:' .. from, 's:' .. from, 'p:' .. from
  end
  local held = {}
  for _, part in ipairs(chunks('HMGET', shares, fields)) do
    for _, v in ipairs(part) do held[#held + 1] = v end
  end
  local set, gone, prefixes = {}, {}, {}
  local total = num(held[1]) - freed_bytes
  local sn, sb = num(held[2]), num(held[3])
  if total > 0 then set[#set + 1], set[#set + 2] = 'bytes', format('%d', total) else gone[#gone + 1] = 'bytes' end
  for k, from in ipairs(senders) do
    local at = 4 * k
    local n = num(held[at]) - counts[from]
    prefixes[from] = held[at + 3] or ''
    if held[at + 2] then sn, sb = sn - counts[from], sb - sizes[from] end
    if n > 0 then
      set[#set + 1], set[#set + 2] = 'n:' .. from, format('%d', n)
      set[#set + 1], set[#set + 2] = 'b:' .. from, format('%d', math.max(num(held[at + 1]) - sizes[from], 0))
    else
      gone[#gone + 1], gone[#gone + 2], gone[#gone + 3], gone[#gone + 4] = 'n:' .. from, 'b:' .. from, 's:' .. from, 'p:' .. from
    end
  end
  for _, u in ipairs(unnamed) do free(u[1], prefixes[u[2]], u[2], u[3]) end
  if sn > 0 then set[#set + 1], set[#set + 2] = 'sn', format('%d', sn) elseif held[2] then gone[#gone + 1] = 'sn' end
  if sb > 0 then set[#set + 1], set[#set + 2] = 'sb', format('%d', sb) elseif held[3] then gone[#gone + 1] = 'sb' end
  chunks('HDEL', shares, gone)
  chunks('HSET', shares, set)
  return removed
end
local removed, at = 0, 2
for u = 1, #KEYS / 2 do
  local count = ARGV[at] + 0
  removed = removed + remove(KEYS[2 * u - 1], KEYS[2 * u], at + 1, at + 3 * count)
  at = at + 3 * count + 1
end
if ledger == '' then return {removed, freed} end
for day, of_day in pairs(freed_at) do
  local field, by_sender = 'd' .. day, {}
  for prefix, of_prefix in pairs(of_day) do
    local bytes = 0
    for from, at in pairs(of_prefix) do
      local size = freed[at + 3]
      bytes = bytes + size
      by_sender[from] = (by_sender[from] or 0) + size
    end
    if prefix ~= '' then release(ledger .. 'net:' .. prefix, field, format('%d', -bytes)) end
  end
  for from, bytes in pairs(by_sender) do release(ledger .. '{' .. from .. '}', field, format('%d', -bytes)) end
end
return {removed, {}}
