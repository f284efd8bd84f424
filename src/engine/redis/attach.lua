
local generation = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], $DOORBELL)
return generation
