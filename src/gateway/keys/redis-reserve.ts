/**
 * The budget counters' scripts on Redis that hold and read (see `redis.ts` for the keys): the Lua
 * shared by every counter script (whether a counter can be read, its window in Redis's time, whether
 * its owner is still stored), the reserve, and the read.
 *
 * @internal
 */
import { Redis } from "effect/persistence"
import type { Owner } from "./ledger.js"

// Whether a counter (its hash and its leases) can be read: `readable(h, z)`. A field absent is
// 0; one present is a whole number as HINCRBY writes it (at most 18 digits, within its range),
// never below 0 (the scripts only add what was spent, and take back only what a lease held).
// Another value (`12.5`, `abc`) read as 0 would start the budget again from nothing, and HINCRBY
// would fail on it half-way through a script; a negative one (`-500`) would give the budget more
// than its limit; a key of another type would fail every command.
export const readableLua = `
local function whole(v)
  if v == false or v == "0" then return true end
  local digits = string.match(v, "^([1-9]%d*)$")
  return digits ~= nil and #digits <= 18
end
local function readable(h, z)
  local th = redis.call("TYPE", h)["ok"]
  local tz = redis.call("TYPE", z)["ok"]
  if (th ~= "hash" and th ~= "none") or (tz ~= "zset" and tz ~= "none") then return false end
  local v = redis.call("HMGET", h, "spent", "held")
  return whole(v[1]) and whole(v[2])
end
`

// A counter's keys in the window of Redis's time `now`: per counter (the first `n` KEYS) its hash
// without the window (KEYS[i]) and its period in ms (0: none); every replica takes the same window,
// whatever its own clock says. Sets `hs`, `zs` (its hash and its leases) and `ends` (when its
// window ends, false without one).
export const windowsLua = `
local function windows(now, periodAt, n)
  for i = 1, n do
    local period = tonumber(ARGV[periodAt(i)])
    local h = KEYS[i]
    ends[i] = false
    if period > 0 then
      local window = math.floor(now / period)
      h = h .. ":" .. string.format("%.0f", period) .. ":" .. string.format("%.0f", window)
      ends[i] = (window + 1) * period
    end
    hs[i] = h
    zs[i] = h .. ":leases"
  end
end
`

// Whether the created key `id` of the secret's hash `sha256` is still stored, in `keys` and `hashes` (the
// directory's): one deleted, or deleted and created again with another secret, owns its counters no more.
// A counter without an owner ("": a team's, a configured key's) is always owned.
export const ownsLua = `
local function owns(keys, hashes, id, sha256)
  if sha256 == "" then return true end
  return redis.call("HGET", hashes, sha256) == id and redis.call("HEXISTS", keys, id) == 1
end
`

// A script over the counters' keys, then the lease (ms), the reservation's id and numbers per counter.
export const leaseScript = (lua: string) =>
  Redis.script(
    (keys: ReadonlyArray<string>, leaseMs: number, id: string, args: ReadonlyArray<number>) => [
      ...keys,
      leaseMs,
      id,
      ...args
    ],
    { numberOfKeys: (keys: ReadonlyArray<string>) => keys.length, lua }
  )

// KEYS: per counter its hash without the window, then the directory's keys, hashes and disabled. ARGV: lease ms,
// reservation id, then per counter: limit, amount, period ms (0: none), then the id and secret's hash of
// the created key the request is of ("" for one of the configuration). The windows are those of Redis's time, returned
// last in every reply. Returns { 0, spent1, held1, ..., now } once every
// amount is held, { i, spent, held, spent1, held1, ..., now } for the first counter it would overrun
// (then the levels it read of the counters before it), { -i, now } for
// the first that cannot be read, { -(n + 1), now } when the key is no longer stored, or { -(n + 2), now }
// when it is disabled (all checked before anything is written): a replica whose cache still holds the key
// as it was holds nothing for it. A lease is
// `<id>|<amount>` with the amount in digits: Lua writes a number of 10^14 or more with an
// exponent, and a sweep that could not read one failed every reservation on the counter. A
// window's counter lives until its window's end and the lease.
export const reserveScript = Redis.script(
  (
    keys: ReadonlyArray<string>,
    directory: readonly [string, string, string],
    leaseMs: number,
    id: string,
    args: ReadonlyArray<number>,
    key: Owner | undefined
  ) => [...keys, ...directory, leaseMs, id, ...args, key?.id ?? "", key?.sha256 ?? ""],
  {
    numberOfKeys: (keys: ReadonlyArray<string>) => keys.length + 3,
    lua: `${readableLua}${ownsLua}
local hs, zs, ends = {}, {}, {}
${windowsLua}
local n = #KEYS - 3
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if not owns(KEYS[n + 1], KEYS[n + 2], ARGV[3 * n + 3], ARGV[3 * n + 4]) then return { -(n + 1), now } end
if ARGV[3 * n + 4] ~= "" and redis.call("HEXISTS", KEYS[n + 3], ARGV[3 * n + 3]) == 1 then return { -(n + 2), now } end
windows(now, function(i) return 3 * i + 2 end, n)
for i = 1, n do
  if not readable(hs[i], zs[i]) then return { -i, now } end
end
local lease = tonumber(ARGV[1])
local id = ARGV[2]
local spent = {}
local held = {}
local function sweep(h, z)
  local expired = redis.call("ZRANGEBYSCORE", z, "-inf", now, "LIMIT", 0, 1000)
  if #expired > 0 then
    local back = 0
    for _, member in ipairs(expired) do
      back = back + (tonumber(string.match(member, "|([^|]*)$")) or 0)
      redis.call("ZREM", z, member)
    end
    redis.call("HINCRBY", h, "held", -back)
  end
  return #expired == 1000
end
for i = 1, n do
  local h = hs[i]
  local z = zs[i]
  local more = sweep(h, z)
  local limit = tonumber(ARGV[3 * i])
  local used
  -- A thousand leases swept at a time; ended leases past them would still count as held, so a
  -- refusal sweeps on until none is left (each lease is swept once: the work is paid for by its reserve).
  while true do
    local v = redis.call("HMGET", h, "spent", "held")
    spent[i] = tonumber(v[1]) or 0
    held[i] = tonumber(v[2]) or 0
    used = spent[i] + held[i]
    if not more or (used + tonumber(ARGV[3 * i + 1]) <= limit and used < limit) then break end
    more = sweep(h, z)
  end
  if used + tonumber(ARGV[3 * i + 1]) > limit or used >= limit then
    local refused = { i, spent[i], held[i] }
    for j = 1, i - 1 do
      refused[2 * j + 2] = spent[j]
      refused[2 * j + 3] = held[j]
    end
    refused[2 * i + 2] = now
    return refused
  end
end
local out = { 0 }
for i = 1, n do
  local h = hs[i]
  local z = zs[i]
  local amount = tonumber(ARGV[3 * i + 1])
  if amount > 0 then
    redis.call("HINCRBY", h, "held", amount)
    redis.call("ZADD", z, now + lease, id .. "|" .. string.format("%.0f", amount))
  end
  if ends[i] then
    local at = string.format("%.0f", ends[i] + lease)
    redis.call("PEXPIREAT", h, at)
    redis.call("PEXPIREAT", z, at)
  end
  out[2 * i] = spent[i]
  out[2 * i + 1] = held[i] + amount
end
out[2 * n + 2] = now
return out
`
  }
).withReturnType<ReadonlyArray<number>>()

// KEYS: per counter its hash without the window. ARGV: per counter its period ms (0: none). Returns
// { 0, spent1, held1, ..., now } in the windows of Redis's time, or { -i, now } for the first
// counter that cannot be read. A lease that has ended holds nothing, as for a reserve (which
// gives it back); the read writes nothing.
export const readScript = Redis.script(
  (keys: ReadonlyArray<string>, periods: ReadonlyArray<number>) => [...keys, ...periods],
  {
    numberOfKeys: (keys: ReadonlyArray<string>) => keys.length,
    lua: `${readableLua}
local hs, zs, ends = {}, {}, {}
${windowsLua}
local n = #KEYS
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
windows(now, function(i) return i end, #KEYS)
local out = { 0 }
for i = 1, n do
  if not readable(hs[i], zs[i]) then return { -i, now } end
  local v = redis.call("HMGET", hs[i], "spent", "held")
  local held = tonumber(v[2]) or 0
  -- Every ended lease, a thousand at a time: one past the first thousand holds nothing either.
  local from = 0
  repeat
    local ended = redis.call("ZRANGEBYSCORE", zs[i], "-inf", now, "LIMIT", from, 1000)
    for _, member in ipairs(ended) do
      held = held - (tonumber(string.match(member, "|([^|]*)$")) or 0)
    end
    from = from + 1000
  until #ended < 1000
  out[2 * i] = tonumber(v[1]) or 0
  out[2 * i + 1] = math.max(0, held)
end
out[2 * n + 2] = now
return out
`
  }
).withReturnType<ReadonlyArray<number>>()
