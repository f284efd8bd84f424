#!lua flags=allow-oom
$RELEASE
for i = 1, #KEYS do release(KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]) end
return #KEYS
