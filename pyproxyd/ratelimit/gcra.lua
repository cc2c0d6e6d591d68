-- GCRA in integer microseconds: the maths of algorithms.TokenBucket and
-- algorithms.LeakyBucket, which differ only in capacity and delay mode.
-- KEYS[1]  the bucket: its "theoretical arrival time" (when it is empty/full again), in us
-- ARGV[1]  emission interval T = 1e6 / rate (us)
-- ARGV[2]  capacity: a token bucket's burst; a leaky bucket's burst + 1 (one served,
--          `burst` waiting behind it); may be fractional
-- ARGV[3]  1 = take, -1 = give back (a refund, or a waiting client went away)
-- ARGV[4]  now in us, or "" for Redis TIME (so gateway clocks do not matter)
-- ARGV[5]  "1" = delay mode: answer how long this request waits before it proceeds
-- returns  {allowed, remaining, reset_us, retry_after_us, delay_us}
local t = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now)
end
if tonumber(ARGV[3]) < 0 then
  local back = tat - t
  if back > now then
    redis.call('SET', KEYS[1], string.format('%.0f', back), 'PX', math.ceil((back - now) / 1000) + 1)
  else
    redis.call('DEL', KEYS[1])
  end
  return {1, 0, 0, 0, 0}
end
local new = tat + t
local limit = capacity * t
if new - now <= limit + 0.001 then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
  local delay = 0
  if ARGV[5] == '1' then
    delay = math.floor(tat - now)
  end
  return {1, math.floor((limit - (new - now)) / t + 1e-9), math.floor(new - now), 0, delay}
end
return {0, 0, math.floor(tat - now), math.ceil(new - now - limit), 0}
