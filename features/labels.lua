-- fraudstream online labels: record fraud / genuine verdicts for risk windows.
-- ARGV: prefix, lateness_ms, n, then per label: id, terminal, mcc ("" = absent),
-- t_ms (of the labelled transaction), is_fraud ("1" / "0"), label_time_ms.
-- A transaction's fraud status is membership of the terminal's fraud log. The latest
-- label by label time wins (the one applied last on equal times), whatever order the
-- labels arrive in: `:l` holds the label time of each transaction's current label.
-- Returns how many labels changed the state.
redis.replicate_commands()

local NL = 6
local DAY = 86400000
local TERM_RET = 37 * DAY
local prefix = ARGV[1]
local lateness = tonumber(ARGV[2])
local n = tonumber(ARGV[3])

local labels = {}
for i = 0, n - 1 do
  local b = 3 + i * NL
  local t = tonumber(ARGV[b + 4])
  local fraud = ARGV[b + 5]
  local label_time = tonumber(ARGV[b + 6])
  if t == nil or label_time == nil or (fraud ~= "1" and fraud ~= "0") then
    return redis.error_reply("BADARG label " .. i)
  end
  local mcc = ARGV[b + 3]
  if mcc == "" then mcc = nil end
  labels[i + 1] = {
    id = ARGV[b + 1], term = ARGV[b + 2], mcc = mcc, t = t, fraud = fraud == "1",
    label_time = label_time,
  }
end

local function ms(x) return string.format("%d", x) end
local changed = 0
for _, l in ipairs(labels) do
  local tk = prefix .. ":t:" .. l.term
  local newest = redis.call("ZREVRANGE", tk .. ":z", 0, 0, "WITHSCORES")
  local cutoff = -1
  if #newest > 0 then cutoff = tonumber(newest[2]) - TERM_RET - lateness end
  -- a verdict on a transaction older than every risk window can change nothing
  local held = tonumber(redis.call("ZSCORE", tk .. ":l", l.id))
  if l.t >= cutoff and (held == nil or l.label_time >= held) then
    redis.call("ZADD", tk .. ":l", ms(l.label_time), l.id)
    redis.call("ZREMRANGEBYSCORE", tk .. ":l", "-inf", "(" .. ms(cutoff))
    redis.call("PEXPIRE", tk .. ":l", ms(TERM_RET + lateness + DAY))
    local delta = 0
    if l.fraud then
      delta = redis.call("ZADD", tk .. ":f", ms(l.t), l.id)
    else
      delta = -redis.call("ZREM", tk .. ":f", l.id)
    end
    if delta ~= 0 then
      changed = changed + 1
      redis.call("ZREMRANGEBYSCORE", tk .. ":f", "-inf", "(" .. ms(cutoff))
      redis.call("PEXPIRE", tk .. ":f", ms(TERM_RET + lateness + DAY))
      if l.mcc then
        local mk = prefix .. ":m:" .. l.mcc
        local day = math.floor(l.t / DAY)
        redis.call("HINCRBY", mk, "f:" .. day, delta)
        -- the 30-day sums cached for the days whose window holds this day are stale
        local stale = {}
        for d = day + 7, day + 36 do stale[#stale + 1] = "s:" .. d end
        redis.call("HDEL", mk, unpack(stale))
        redis.call("PEXPIRE", mk, ms(TERM_RET + 2 * DAY + lateness))
      end
    end
  end
end
return changed
