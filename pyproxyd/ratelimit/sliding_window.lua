-- Sliding window log, the maths of algorithms.SlidingWindow in integer microseconds:
-- at most `limit` requests in any window; a sorted set of the allowed requests' times.
-- KEYS[1]  the sorted set (score = time in us, member = a unique request id)
-- ARGV[1]  limit
-- ARGV[2]  window (us)
-- ARGV[3]  1 = count this request, -1 = remove the entry ARGV[5] again
-- ARGV[4]  now in us, or "" for Redis TIME
-- ARGV[5]  the member (unique per request)
-- returns  {allowed, remaining, reset_us, retry_after_us, delay_us}
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if tonumber(ARGV[3]) < 0 then
  redis.call('ZREM', KEYS[1], ARGV[5])
  return {1, 0, 0, 0, 0}
end
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[5])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1)
  local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
  return {1, limit - count - 1, math.floor(oldest + window - now), 0, 0}
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
local wait = math.ceil(oldest + window - now)
return {0, 0, wait, wait, 0}
