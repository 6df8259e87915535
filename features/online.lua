-- fraudstream online features: one call computes and records a whole micro-batch.
-- Semantics: features/definitions.py. Key layout and costs: features/online.py.
--
-- ARGV: prefix, lateness_ms, deadline_us (client's wall clock; 0 = none), n_tx, then
-- per transaction NF fields: id, t_ms, card, terminal, amount, amount_milli, device,
-- ip, mcc, lat, lon ("" = absent).
-- Returns cmsgpack {too_late_count, features row-major (NFEAT per transaction)}.
--
-- Atomicity: Redis runs a script alone. Every argument is validated before the first
-- write, and a script started after the caller's deadline writes nothing and returns
-- "EXPIRED", so a batch is recorded whole or not at all.
redis.replicate_commands()

local NF = 11
local DAY = 86400000
local HOUR = 3600000
local DELAY = 7 * DAY
local CARD_RET = 30 * DAY
local TERM_RET = 37 * DAY
local SCALE = 1000
local R = 6371.0088
local NAN = 0 / 0
local MIN_SPEED_S = 60

local prefix = ARGV[1]
local lateness = tonumber(ARGV[2])
local deadline = tonumber(ARGV[3])
local n = tonumber(ARGV[4])

-- validation: nothing is written unless every row parses
local rows = {}
for i = 0, n - 1 do
  local b = 4 + i * NF
  local t = tonumber(ARGV[b + 2])
  local milli = tonumber(ARGV[b + 6])
  local amount = tonumber(ARGV[b + 5])
  if t == nil or milli == nil or amount == nil then
    return redis.error_reply("BADARG row " .. i)
  end
  local lat, lon = tonumber(ARGV[b + 10]), tonumber(ARGV[b + 11])
  if lat == nil or lon == nil then lat, lon = nil, nil end
  local function opt(v) if v == "" then return nil end return v end
  rows[i + 1] = {
    id = ARGV[b + 1], t = t, card = ARGV[b + 3], term = ARGV[b + 4], amount = amount,
    milli = milli, dev = opt(ARGV[b + 7]), ip = opt(ARGV[b + 8]), mcc = opt(ARGV[b + 9]),
    lat = lat, lon = lon,
  }
end

if deadline > 0 then
  local now = redis.call("TIME")
  if tonumber(now[1]) * 1000000 + tonumber(now[2]) > deadline then
    return "EXPIRED"
  end
end

local function ms(x) return string.format("%d", x) end

-- Byte-wise string order. Lua compares strings with strcoll, and Redis sets the
-- collation locale from its environment, so `<` need not be byte order; ids tie-break
-- events in the same millisecond and must compare the way the offline builder does.
local function before(a, b)
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end

-- HMGET / HDEL over a long list in chunks (Lua's unpack has a stack limit).
local CHUNK = 500
local function hmget_all(key, fields)
  local out = {}
  for s = 1, #fields, CHUNK do
    local part = {}
    for j = s, math.min(s + CHUNK - 1, #fields) do part[#part + 1] = fields[j] end
    local got = redis.call("HMGET", key, unpack(part))
    for j = 1, #got do out[#out + 1] = got[j] end
  end
  return out
end
local function hdel_all(key, fields)
  for s = 1, #fields, CHUNK do
    local part = {}
    for j = s, math.min(s + CHUNK - 1, #fields) do part[#part + 1] = fields[j] end
    redis.call("HDEL", key, unpack(part))
  end
end
local function excl(x) return "(" .. string.format("%d", x) end

-- Strip the payload after the id in "id\0payload" members (device / ip logs).
local function split(member)
  local z = string.find(member, "\0", 1, true)
  return string.sub(member, 1, z - 1), string.sub(member, z + 1)
end

-- Members of zset `key` with score in (lo, t] ordered at or before (t, id); `id_of`
-- extracts the id from a member. Returns a list of members.
local function window(key, lo, t, id, id_of)
  local r = redis.call("ZRANGEBYSCORE", key, excl(lo), ms(t), "WITHSCORES")
  local out = {}
  for j = 1, #r, 2 do
    local m = r[j]
    if tonumber(r[j + 1]) < t or not before(id, id_of(m)) then out[#out + 1] = m end
  end
  return out
end

local function ident(m) return m end
local function head(m) local a = split(m) return a end

local function haversine(lat1, lon1, lat2, lon2)
  local p1, p2 = lat1 * math.pi / 180, lat2 * math.pi / 180
  local dp = (lat2 - lat1) * math.pi / 180
  local dl = (lon2 - lon1) * math.pi / 180
  local s1, s2 = math.sin(dp / 2), math.sin(dl / 2)
  local a = s1 * s1 + math.cos(p1) * math.cos(p2) * s2 * s2
  return 2 * R * math.asin(math.min(1, math.sqrt(a)))
end

-- Card payload: cumulative count and milli-sum up to and including the event, so a
-- trailing window is two lookups, whatever its length.
local function unpack_payload(p)
  local v = cmsgpack.unpack(p)
  return v
end

local too_late = 0
local out = {too_late}
local mcc_cache = {}
-- per category: {newest day counted before this batch, newest day counted or cached now}
local mcc_newest = {}
local counts_min_day = math.huge
local LATE_DAYS = math.ceil(lateness / DAY)

-- Upkeep that only needs doing once per key per batch (TTL, trimming, bucket counts).
local touched_logs, mcc_counts = {}, {}
local fraud_log_exists = {}

for _, tx in ipairs(rows) do
  local t, id = tx.t, tx.id
  local ck = prefix .. ":c:" .. tx.card
  local cz, ch = ck .. ":z", ck .. ":h"
  local devfield = "!"
  if tx.dev then devfield = "#" .. tx.dev end
  local st = redis.call("HMGET", ch, "!maxt", "!basec", "!bases", "!trim", id, devfield, "@T")
  local maxt = tonumber(st[1]) or -1
  local basec, bases = tonumber(st[2]) or 0, tonumber(st[3]) or 0
  local trimmed_to = tonumber(st[4]) or -1
  local seen = st[5] ~= false
  local dev_last = tonumber(st[6])
  -- terminals the card used lately and when it last used each: {term, t, term, t...}
  local recent = {}
  if st[7] then recent = cmsgpack.unpack(st[7]) end
  if not seen and maxt >= 0 and t < maxt - lateness then too_late = too_late + 1 end
  local in_order = (not seen) and t > maxt

  -- predecessor in (t, id) order: the last event strictly before this one
  local pred_id, pred_t = nil, nil
  local r = redis.call("ZREVRANGEBYSCORE", cz, ms(t), "-inf", "WITHSCORES", "LIMIT", 0, 1)
  if #r > 0 and tonumber(r[2]) < t then
    pred_id, pred_t = r[1], tonumber(r[2])
  elseif #r > 0 then
    -- same millisecond as an event already recorded: order the ties by id
    for _, m in ipairs(redis.call("ZRANGEBYSCORE", cz, ms(t), ms(t))) do
      if before(m, id) then pred_id, pred_t = m, t end
    end
    if pred_id == nil then
      r = redis.call("ZREVRANGEBYSCORE", cz, excl(t), "-inf", "WITHSCORES", "LIMIT", 0, 1)
      if #r > 0 then pred_id, pred_t = r[1], tonumber(r[2]) end
    end
  end
  -- Window starts: the last event with time <= t - w, whose cumulative totals are
  -- subtracted. The predecessor, or a longer window's answer, often is it already.
  local bounds = {}
  local known_id, known_t = pred_id, pred_t
  for k, w in ipairs({DAY, 7 * DAY, 30 * DAY}) do
    if known_id == nil then
      bounds[k] = false
    elseif known_t <= t - w then
      bounds[k] = known_id
    else
      local b = redis.call("ZREVRANGEBYSCORE", cz, ms(t - w), "-inf", "WITHSCORES", "LIMIT", 0, 1)
      if #b > 0 then
        known_id, known_t = b[1], tonumber(b[2])
        bounds[k] = known_id
      else
        known_id = nil
        bounds[k] = false
      end
    end
  end
  local want = {}
  if pred_id then want[#want + 1] = pred_id end
  for k = 1, 3 do if bounds[k] then want[#want + 1] = bounds[k] end end
  local payloads = {}
  if #want > 0 then
    local got = redis.call("HMGET", ch, unpack(want))
    for j, m in ipairs(want) do payloads[m] = unpack_payload(got[j]) end
  end
  local pc, ps = basec, bases
  local prev = nil
  if pred_id then prev = payloads[pred_id]; pc, ps = prev[1], prev[2] end
  local selfc, selfs = pc + 1, ps + tx.milli
  local feats = {}
  local avg30 = NAN
  for k = 1, 3 do
    local bc, bs = basec, bases
    if bounds[k] then local p = payloads[bounds[k]]; bc, bs = p[1], p[2] end
    local cnt, sum = selfc - bc, selfs - bs
    local avg = (sum / cnt) / SCALE
    feats[k] = {cnt, avg}
    if k == 3 then avg30 = avg; if sum == 0 then avg30 = NAN end end
  end

  -- previous transaction within the card history window
  local secs, dist, speed = NAN, NAN, NAN
  if pred_id and pred_t > t - CARD_RET then
    secs = (t - pred_t) / 1000
    if tx.lat ~= nil and prev[5] ~= false then
      dist = haversine(prev[5], prev[6], tx.lat, tx.lon)
      speed = dist / (math.max(secs, MIN_SPEED_S) / 3600)
    end
  end

  -- distinct terminals in the last day (this transaction included)
  local terms = {[tx.term] = true}
  local nterms = 1
  local day_members = {}
  if in_order then
    -- everything recorded is before us: a terminal counts if last used within the day
    for j = 1, #recent, 2 do
      if recent[j] ~= tx.term and recent[j + 1] > t - DAY then nterms = nterms + 1 end
    end
  elseif feats[1][1] == 2 then
    -- the only other event of the day is the predecessor, already at hand
    if prev[3] ~= tx.term then nterms = 2 end
  elseif feats[1][1] > 2 then
    day_members = window(cz, t - DAY, t, id, ident)
  end
  if #day_members > 0 then
    local got = hmget_all(ch, day_members)
    for j = 1, #got do
      local term = cmsgpack.unpack(got[j])[3]
      if not terms[term] then terms[term] = true; nterms = nterms + 1 end
    end
  end

  -- device new for this card: the fast path trusts the per-device last-seen time, which
  -- is exact when nothing of this card is ordered after us; otherwise scan 30 days.
  local devnew = NAN
  if tx.dev then
    devnew = 1
    if in_order then
      if dev_last ~= nil and dev_last > t - CARD_RET then devnew = 0 end
    else
      local members = window(cz, t - CARD_RET, t, id, ident)
      local earlier = {}
      for _, m in ipairs(members) do if m ~= id then earlier[#earlier + 1] = m end end
      if #earlier > 0 then
        local got = hmget_all(ch, earlier)
        for j = 1, #got do
          if cmsgpack.unpack(got[j])[4] == tx.dev then devnew = 0; break end
        end
      end
    end
  end

  -- terminal: delayed windows, counts and known frauds
  local tk = prefix .. ":t:" .. tx.term
  local tz, tf = tk .. ":z", tk .. ":f"
  local tfeats = {}
  if fraud_log_exists[tf] == nil then fraud_log_exists[tf] = redis.call("EXISTS", tf) == 1 end
  for k, w in ipairs({DAY, 7 * DAY, 30 * DAY}) do
    local lo, hi = excl(t - DELAY - w), ms(t - DELAY)
    local cnt = redis.call("ZCOUNT", tz, lo, hi)
    local fr = 0
    if cnt > 0 and fraud_log_exists[tf] then fr = redis.call("ZCOUNT", tf, lo, hi) / cnt end
    tfeats[k] = {cnt, fr}
  end
  -- the run of known frauds at the end of the 30-day delayed window (none when that
  -- window holds no known fraud: the common case costs nothing more)
  local streak = 0
  if tfeats[3][2] > 0 then
    local hi, lo = ms(t - DELAY), excl(t - DELAY - 30 * DAY)
    local offset, step = 0, 4
    while true do
      local r = redis.call("ZREVRANGEBYSCORE", tz, hi, lo, "WITHSCORES", "LIMIT", offset, step)
      local ids = {}
      for j = 1, #r, 2 do ids[#ids + 1] = r[j] end
      if #ids == 0 then break end
      -- a fraud log entry counts for the event with the same id and event time
      local known = redis.call("ZMSCORE", tf, unpack(ids))
      local run = 0
      for j = 1, #ids do
        if known[j] and tonumber(known[j]) == tonumber(r[2 * j]) then run = j else break end
      end
      streak = streak + run
      if run < #ids or #ids < step then break end
      offset = offset + step
      step = step * 4
    end
  end

  -- distinct cards per device / ip in the last hour
  local function distinct_cards(kind, value)
    if not value then return NAN end
    local key = prefix .. ":" .. kind .. ":" .. value .. ":z"
    local cards = {[tx.card] = true}
    local cnt = 1
    for _, m in ipairs(window(key, t - HOUR, t, id, head)) do
      local _, card = split(m)
      if not cards[card] then cards[card] = true; cnt = cnt + 1 end
    end
    return cnt
  end
  local dev_cards = distinct_cards("d", tx.dev)
  local ip_cards = distinct_cards("i", tx.ip)

  -- merchant category: whole UTC days [today - 36, today - 7]
  local mcc_risk = NAN
  local today = math.floor(t / DAY)
  if tx.mcc then
    -- The 30-day sums are read once per (category, day) in a batch, from `s:<day>`:
    -- kept across batches until a write inside those 30 days (a label, a payment a
    -- week late) deletes it. A day old enough to reach trimmed buckets is summed
    -- afresh and not kept. The batch's own earlier transactions, counted at the end
    -- of it, are added here.
    local ckey = tx.mcc .. "|" .. today
    local base = mcc_cache[ckey]
    local newest = mcc_newest[tx.mcc]
    if base == nil then
      local mk = prefix .. ":m:" .. tx.mcc
      local got = redis.call("HMGET", mk, "s:" .. today, "!d")
      if newest == nil then
        local stored = tonumber(got[2]) or -1
        newest = {stored, stored}
        mcc_newest[tx.mcc] = newest
      end
      if got[1] then
        local sp = string.find(got[1], " ", 1, true)
        base = {tonumber(string.sub(got[1], 1, sp - 1)), tonumber(string.sub(got[1], sp + 1))}
      else
        local fields = {}
        for d = today - 36, today - 7 do
          fields[#fields + 1] = "n:" .. d
          fields[#fields + 1] = "f:" .. d
        end
        got = redis.call("HMGET", mk, unpack(fields))
        local nn, ff = 0, 0
        for j = 1, #got, 2 do
          nn = nn + (tonumber(got[j]) or 0)
          ff = ff + (tonumber(got[j + 1]) or 0)
        end
        base = {nn, ff}
        if today > newest[1] - 2 - LATE_DAYS then
          redis.call("HSET", mk, "s:" .. today, ms(nn) .. " " .. ms(ff))
        end
      end
      mcc_cache[ckey] = base
    end
    newest[2] = math.max(newest[2], today)
    local nn = base[1]
    if counts_min_day <= today - 7 then
      for field, count in pairs(mcc_counts) do
        local bar = string.find(field, "|", 1, true)
        local day = tonumber(string.sub(field, bar + 1))
        if string.sub(field, 1, bar - 1) == tx.mcc and day >= today - 36 and day <= today - 7 then
          nn = nn + count
        end
      end
    end
    mcc_risk = 0
    if nn > 0 then mcc_risk = base[2] / nn end
  end

  -- the row, in FEATURE_NAMES order
  local days = math.floor(t / DAY)
  local weekday = (days + 3) % 7
  local hour = math.floor((t - days * DAY) / HOUR)
  local ratio, mean1, mean7 = NAN, NAN, NAN
  if avg30 == avg30 then
    ratio, mean1, mean7 = tx.amount / avg30, feats[1][2] / avg30, feats[2][2] / avg30
  end
  local o = #out
  out[o + 1], out[o + 2], out[o + 3] = tx.amount, (weekday >= 5) and 1 or 0, (hour <= 6) and 1 or 0
  out[o + 4], out[o + 5], out[o + 6] = feats[1][1], feats[1][2], feats[2][1]
  out[o + 7], out[o + 8], out[o + 9] = feats[2][2], feats[3][1], feats[3][2]
  out[o + 10], out[o + 11], out[o + 12] = tfeats[1][1], tfeats[1][2], tfeats[2][1]
  out[o + 13], out[o + 14], out[o + 15] = tfeats[2][2], tfeats[3][1], tfeats[3][2]
  out[o + 16], out[o + 17], out[o + 18] = ratio, secs, nterms
  out[o + 19], out[o + 20], out[o + 21] = mean1, mean7, streak
  out[o + 22], out[o + 23], out[o + 24] = devnew, dev_cards, ip_cards
  out[o + 25], out[o + 26], out[o + 27] = dist, speed, mcc_risk

  -- record the transaction once (idempotent by id: `seen` came from the card hash)
  if not seen then
    local newmax = math.max(maxt, t)
    local lat, lon = tx.lat, tx.lon
    if lat == nil then lat, lon = false, false end
    local hset = {ch, id, cmsgpack.pack({selfc, selfs, tx.term, tx.dev or false, lat, lon}),
      "!maxt", ms(newmax)}
    if tx.dev and t > (dev_last or -1) then
      hset[#hset + 1] = "#" .. tx.dev
      hset[#hset + 1] = ms(t)
    end
    local keep, found = {}, false
    for j = 1, #recent, 2 do
      local term, last = recent[j], recent[j + 1]
      if term == tx.term then last = math.max(last, t); found = true end
      if last > newmax - DAY - lateness then keep[#keep + 1] = term; keep[#keep + 1] = last end
    end
    if not found then keep[#keep + 1] = tx.term; keep[#keep + 1] = t end
    hset[#hset + 1] = "@T"
    hset[#hset + 1] = cmsgpack.pack(keep)
    redis.call("HSET", unpack(hset))
    redis.call("ZADD", cz, ms(t), id)
    if not in_order then
      -- late: every event ordered after this one now has one more event before it
      local r = redis.call("ZRANGEBYSCORE", cz, ms(t), "+inf", "WITHSCORES")
      for j = 1, #r, 2 do
        local m = r[j]
        if tonumber(r[j + 1]) > t or before(id, m) then
          local p = cmsgpack.unpack(redis.call("HGET", ch, m))
          p[1], p[2] = p[1] + 1, p[2] + tx.milli
          redis.call("HSET", ch, m, cmsgpack.pack(p))
        end
      end
    end
    -- trim the card log (hourly hysteresis): keep the cumulative base of what leaves
    local cutoff = newmax - CARD_RET - lateness
    if cutoff > trimmed_to + HOUR then
      local old = redis.call("ZRANGEBYSCORE", cz, "-inf", excl(cutoff))
      if #old > 0 then
        local last = cmsgpack.unpack(redis.call("HGET", ch, old[#old]))
        local devs = {}
        local gone = hmget_all(ch, old)
        for j = 1, #gone do
          local d = cmsgpack.unpack(gone[j])[4]
          if d then devs[#devs + 1] = "#" .. d end
        end
        hdel_all(ch, old)
        redis.call("ZREMRANGEBYSCORE", cz, "-inf", excl(cutoff))
        -- forget devices whose last use left the history
        if #devs > 0 then
          local lasts = hmget_all(ch, devs)
          local stale = {}
          for j = 1, #devs do
            if (tonumber(lasts[j]) or -1) < cutoff then stale[#stale + 1] = devs[j] end
          end
          hdel_all(ch, stale)
        end
        redis.call("HSET", ch, "!basec", ms(last[1]), "!bases", ms(last[2]))
      end
      redis.call("HSET", ch, "!trim", ms(cutoff))
      -- TTLs are refreshed with the (hourly) trim: an idle card expires whole
      local ttl = ms(CARD_RET + lateness + DAY + HOUR)
      redis.call("PEXPIRE", ch, ttl)
      redis.call("PEXPIRE", cz, ttl)
    end

    redis.call("ZADD", tz, ms(t), id)
    local function touch(key, keep)
      local cut = t - keep - lateness
      local was = touched_logs[key]
      if was == nil then touched_logs[key] = {cut, keep} elseif cut > was[1] then was[1] = cut end
    end
    touch(tz, TERM_RET)

    for _, kv in ipairs({{"d", tx.dev}, {"i", tx.ip}}) do
      if kv[2] then
        local key = prefix .. ":" .. kv[1] .. ":" .. kv[2] .. ":z"
        redis.call("ZADD", key, ms(t), id .. "\0" .. tx.card)
        touch(key, HOUR)
      end
    end

    if tx.mcc then
      local field = tx.mcc .. "|" .. today
      mcc_counts[field] = (mcc_counts[field] or 0) + 1
      counts_min_day = math.min(counts_min_day, today)
    end
  end
end

for key, cut in pairs(touched_logs) do
  redis.call("ZREMRANGEBYSCORE", key, "-inf", excl(cut[1]))
  redis.call("PEXPIRE", key, ms(cut[2] + lateness + DAY))
end
for field, count in pairs(mcc_counts) do
  local bar = string.find(field, "|", 1, true)
  local mcc, day = string.sub(field, 1, bar - 1), tonumber(string.sub(field, bar + 1))
  local mk = prefix .. ":m:" .. mcc
  redis.call("HINCRBY", mk, "n:" .. day, count)
  -- a payment a week or more behind the newest: the cached sums holding its day go
  local newest = mcc_newest[mcc][2]
  if day + 7 <= newest then
    local stale = {}
    for d = day + 7, math.min(day + 36, newest) do stale[#stale + 1] = "s:" .. d end
    redis.call("HDEL", mk, unpack(stale))
  end
  -- A transaction up to the allowed lateness behind the newest still reads 30 days
  -- behind its own (earlier) day: only buckets older than that may go.
  local gone = day - 38 - LATE_DAYS
  redis.call("HDEL", mk, "n:" .. gone, "f:" .. gone, "s:" .. gone)
  redis.call("PEXPIRE", mk, ms(TERM_RET + 2 * DAY + lateness))
end
for mcc, newest in pairs(mcc_newest) do
  if newest[2] > newest[1] then
    redis.call("HSET", prefix .. ":m:" .. mcc, "!d", ms(newest[2]))
  end
end

out[1] = too_late
return cmsgpack.pack(out)
