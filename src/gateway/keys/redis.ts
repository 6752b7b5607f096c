/**
 * The key store on Redis, shared by every gateway using the same Redis and prefix.
 *
 * Keys: `<prefix>keys` (hash: id -> the key's JSON, secret hashed), `<prefix>hashes` (hash:
 * SHA-256 -> id), `<prefix>disabled` (hash: id -> 1), `<prefix>ids` (sorted set of the ids, all
 * scored 0: the listing's pages by id; while it holds fewer than `<prefix>keys`, as after keys an
 * earlier version created, each listing adds up to 20 pages of `HSCAN` to it and says it is
 * incomplete). Budgets: per counter a hash
 * `<prefix>budget:<counter>` (`spent`, `held`) and a sorted set `<prefix>budget:<counter>:leases`
 * of the reservations it holds (`<id>|<amount>`, scored by their lease end). Every
 * operation but filling `<prefix>ids` is one Lua script, so a
 * reservation on several counters is atomic across processes: 200 concurrent first
 * requests of a key cannot hold more than its budget. A reservation whose gateway died is
 * given back when its lease ends (the next reservation on the counter sweeps it), with the
 * time from the Redis server's clock. A budget's period windows are taken from that clock too
 * (in the script that reserves, no extra round trip): replicas whose clocks differ charge the
 * same window, and a counter's expiry is set at its window's end (plus the longest lease) in
 * that time, never shortened by a replica whose clock runs ahead. A counter whose `spent` or `held` is not a whole number
 * of 0 or more, or whose key holds another type (edited by hand, written by another version), is read by
 * no script as empty: it is reported (`UnreadableCounter`), and nothing is written to it.
 *
 * Not for Redis Cluster: a reservation touches the counters of several scopes in one script.
 *
 * @internal
 */
import { Effect, Result, Semaphore } from "effect"
import { Redis } from "effect/persistence"
import type { Guard, StoreError } from "../../Redis.js"
import {
  type Backend,
  type Charge,
  type Counter,
  type GivenBack,
  type InsertResult,
  type Level,
  type Owner,
  type ReserveResult,
  retime,
  UnreadableCounter,
  UnreadableRecord
} from "./ledger.js"
import { decodeRecord, encodeRecord, type KeyRecord } from "./options.js"

// HSCAN pages (COUNT 500) a listing adds to the index of ids at most: about 10,000 ids.
const fillPages = 20

const lookupScript = Redis.script(
  (hashes: string, keys: string, disabled: string, sha256: string) => [hashes, keys, disabled, sha256],
  {
    numberOfKeys: 3,
    lua: `
local id = redis.call("HGET", KEYS[1], ARGV[1])
if not id then return false end
local record = redis.call("HGET", KEYS[2], id)
if not record then return false end
return { record, redis.call("HEXISTS", KEYS[3], id) }
`
  }
).withReturnType<readonly [string, number] | null>()

const byIdScript = Redis.script((keys: string, disabled: string, id: string) => [keys, disabled, id], {
  numberOfKeys: 2,
  lua: `
local record = redis.call("HGET", KEYS[1], ARGV[1])
if not record then return false end
return { record, redis.call("HEXISTS", KEYS[2], ARGV[1]) }
`
}).withReturnType<readonly [string, number] | null>()

// What is left of an earlier key of the id: `clear(from, n, at)` deletes, for KEYS[from .. from + n - 1] (the new
// or removed key's budget counters without their window) with their periods at ARGV[at ..] (0: none), each
// counter in the window of Redis's time now (older windows expire, and no one reads them), then every key after
// them (the key's rate-limit windows).
const clearLua = `
local function clear(from, n, at)
  local time = redis.call("TIME")
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  for i = 0, n - 1 do
    local h = KEYS[from + i]
    local period = tonumber(ARGV[at + i])
    if period > 0 then
      h = h .. ":" .. string.format("%.0f", period) .. ":" .. string.format("%.0f", math.floor(now / period))
    end
    redis.call("DEL", h, h .. ":leases")
  end
  for i = from + n, #KEYS do redis.call("DEL", KEYS[i]) end
end
`

// KEYS: keys, hashes, ids, disabled, then what `clear` clears. ARGV: id, sha256, json, maxKeys, count of counters,
// their periods. A disabled mark of an earlier key of the id (removed by hand) goes too: the key answered enabled.
const insertScript = Redis.script(
  (
    keys: string,
    hashes: string,
    ids: string,
    disabled: string,
    cleared: ReadonlyArray<string>,
    id: string,
    sha256: string,
    json: string,
    maxKeys: number,
    periods: ReadonlyArray<number>
  ) => [keys, hashes, ids, disabled, ...cleared, id, sha256, json, maxKeys, periods.length, ...periods],
  {
    numberOfKeys: (_keys, _hashes, _ids, _disabled, cleared) => 4 + cleared.length,
    lua: `${clearLua}
if redis.call("HEXISTS", KEYS[1], ARGV[1]) == 1 then return "id-taken" end
if redis.call("HEXISTS", KEYS[2], ARGV[2]) == 1 then return "secret-taken" end
if redis.call("HLEN", KEYS[1]) >= tonumber(ARGV[4]) then return "full" end
clear(5, tonumber(ARGV[5]), 6)
redis.call("HDEL", KEYS[4], ARGV[1])
redis.call("HSET", KEYS[1], ARGV[1], ARGV[3])
redis.call("HSET", KEYS[2], ARGV[2], ARGV[1])
redis.call("ZADD", KEYS[3], 0, ARGV[1])
return "inserted"
`
  }
).withReturnType<string>()

// KEYS: keys, hashes, disabled, ids, then what `clear` clears. ARGV: id, sha256, json, count of counters, their
// periods. Removes the key only while it is still the one read: of the secret `sha256`, or (a record this version
// cannot read) stored as `json` exactly; the counters are that key's. "changed" when the id holds another now,
// "missing" when none.
const removeScript = Redis.script(
  (
    keys: string,
    hashes: string,
    disabled: string,
    ids: string,
    cleared: ReadonlyArray<string>,
    id: string,
    sha256: string,
    json: string,
    periods: ReadonlyArray<number>
  ) => [keys, hashes, disabled, ids, ...cleared, id, sha256, json, periods.length, ...periods],
  {
    numberOfKeys: (_keys, _hashes, _disabled, _ids, cleared) => 4 + cleared.length,
    lua: `${clearLua}
local record = redis.call("HGET", KEYS[1], ARGV[1])
if not record then return "missing" end
local ok, decoded = pcall(cjson.decode, record)
local sha256 = ok and type(decoded) == "table" and type(decoded.sha256) == "string" and decoded.sha256 or false
if ARGV[3] ~= "" then
  if record ~= ARGV[3] then return "changed" end
elseif sha256 ~= ARGV[2] then
  return "changed"
end
redis.call("HDEL", KEYS[1], ARGV[1])
if sha256 and redis.call("HGET", KEYS[2], sha256) == ARGV[1] then redis.call("HDEL", KEYS[2], sha256) end
redis.call("HDEL", KEYS[3], ARGV[1])
redis.call("ZREM", KEYS[4], ARGV[1])
clear(5, tonumber(ARGV[4]), 5)
return "removed"
`
  }
).withReturnType<string>()

// KEYS: keys, ids. ARGV: ids an HSCAN of the keys found. Adds to the index those still keys: one deleted since the scan
// would stay in it for good, a ghost that the listing skips but counts, so that an index missing keys looked whole.
const indexScript = Redis.script((keys: string, ids: string, found: ReadonlyArray<string>) => [keys, ids, ...found], {
  numberOfKeys: 2,
  lua: `
for i = 1, #ARGV do
  if redis.call("HEXISTS", KEYS[1], ARGV[i]) == 1 then redis.call("ZADD", KEYS[2], 0, ARGV[i]) end
end
return 0
`
})

// KEYS: keys, disabled, ids. ARGV: after ("" for the first page), count. Returns { more, incomplete,
// id1, json1, disabled1, ... }: up to count ids after `after`, each with its record ("" when gone)
// and 1 when disabled; incomplete 1 while the ids hold fewer than the keys.
const pageScript = Redis.script(
  (keys: string, disabled: string, ids: string, after: string, count: number) => [keys, disabled, ids, after, count],
  {
    numberOfKeys: 3,
    lua: `
local count = tonumber(ARGV[2])
local from = ARGV[1] == "" and "-" or "(" .. ARGV[1]
local ids = redis.call("ZRANGEBYLEX", KEYS[3], from, "+", "LIMIT", 0, count + 1)
local incomplete = redis.call("ZCARD", KEYS[3]) < redis.call("HLEN", KEYS[1]) and 1 or 0
local out = { #ids > count and 1 or 0, incomplete }
for i = 1, math.min(#ids, count) do
  out[#out + 1] = ids[i]
  out[#out + 1] = redis.call("HGET", KEYS[1], ids[i]) or ""
  out[#out + 1] = redis.call("HEXISTS", KEYS[2], ids[i])
end
return out
`
  }
).withReturnType<ReadonlyArray<string | number>>()

const disableScript = Redis.script(
  (keys: string, disabled: string, id: string, flag: boolean) => [keys, disabled, id, flag ? 1 : 0],
  {
    numberOfKeys: 2,
    lua: `
local record = redis.call("HGET", KEYS[1], ARGV[1])
if not record then return false end
if ARGV[2] == "1" then redis.call("HSET", KEYS[2], ARGV[1], 1) else redis.call("HDEL", KEYS[2], ARGV[1]) end
return record
`
  }
).withReturnType<string | null>()

// Whether a counter (its hash and its leases) can be read: `readable(h, z)`. A field absent is
// 0; one present is a whole number as HINCRBY writes it (at most 18 digits, within its range),
// never below 0 (the scripts only add what was spent, and take back only what a lease held).
// Another value (`12.5`, `abc`) read as 0 would start the budget again from nothing, and HINCRBY
// would fail on it half-way through a script; a negative one (`-500`) would give the budget more
// than its limit; a key of another type would fail every command.
const readableLua = `
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
const windowsLua = `
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
const ownsLua = `
local function owns(keys, hashes, id, sha256)
  if sha256 == "" then return true end
  return redis.call("HGET", hashes, sha256) == id and redis.call("HEXISTS", keys, id) == 1
end
`

// A script over the counters' keys, then the lease (ms), the reservation's id and numbers per counter.
const leaseScript = (lua: string) =>
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
const reserveScript = Redis.script(
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

// KEYS: per counter its hash and its leases (in the window it was reserved in). ARGV: reservation
// id, once (1: see `Ledger.settle`), lease ms, then per counter: amount held, amount spent, when
// it expires (ms since the epoch, its window's end and the longest lease; 0: never). A lease already swept is not given
// back twice. With once, a settle runs only while a lease of the id remains; a reservation that
// holds nothing leaves a mark instead, an empty lease of the first counter (swept as one). A
// counter that cannot be read is left as it is (and out of that test): the others are settled. KEYS end
// with the directory's keys and hashes, ARGV with per counter the id and secret's hash of its owner (""
// for none): a counter whose owner is no longer stored gets back what the id held on it, and nothing
// else (no spent, no expiry, no mark), so that it is not written again once its key was deleted.
// Returns per counter { 1, spent, held }, { 0, 0, 0 } for one that cannot be read, or { 2, 0, 0 } for
// one whose owner is gone, then 1 when it added the amounts (0: with once, the id was settled already,
// or its lease ended and was swept).
const settleScript = Redis.script(
  (
    keys: ReadonlyArray<string>,
    directory: readonly [string, string],
    id: string,
    once: boolean,
    leaseMs: number,
    args: ReadonlyArray<number | string>
  ) => [...keys, ...directory, id, once ? 1 : 0, leaseMs, ...args],
  {
    numberOfKeys: (keys: ReadonlyArray<string>) => keys.length + 2,
    lua: `${readableLua}${ownsLua}
local id = ARGV[1]
local n = (#KEYS - 2) / 2
local ok = {}
local owned = {}
local mark = false
for i = 1, n do
  ok[i] = readable(KEYS[2 * i - 1], KEYS[2 * i])
  owned[i] = owns(KEYS[2 * n + 1], KEYS[2 * n + 2], ARGV[3 * n + 2 + 2 * i], ARGV[3 * n + 3 + 2 * i])
  if ok[i] and owned[i] and not mark then mark = KEYS[2 * i] end
end
local first = true
if ARGV[2] == "1" then
  first = false
  local leased = false
  for i = 1, n do
    local reserved = tonumber(ARGV[3 * i + 1])
    if ok[i] and reserved > 0 then
      leased = true
      if redis.call("ZSCORE", KEYS[2 * i], id .. "|" .. string.format("%.0f", reserved)) then first = true end
    end
  end
  if not leased and mark then
    local time = redis.call("TIME")
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    first = redis.call("ZADD", mark, "NX", now + tonumber(ARGV[3]), id .. "|0") == 1
  end
end
local out = {}
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local reserved = tonumber(ARGV[3 * i + 1])
  local actual = tonumber(ARGV[3 * i + 2])
  local expires = ARGV[3 * i + 3]
  if ok[i] then
    if first then
      if reserved > 0 and redis.call("ZREM", z, id .. "|" .. string.format("%.0f", reserved)) == 1 then
        redis.call("HINCRBY", h, "held", -reserved)
      end
      if owned[i] then
        if actual > 0 then redis.call("HINCRBY", h, "spent", actual) end
        if expires ~= "0" then
          redis.call("PEXPIREAT", h, expires)
          redis.call("PEXPIREAT", z, expires)
        end
      end
    end
    if owned[i] then
      local v = redis.call("HMGET", h, "spent", "held")
      out[3 * i - 2] = 1
      out[3 * i - 1] = tonumber(v[1]) or 0
      out[3 * i] = tonumber(v[2]) or 0
    else
      out[3 * i - 2] = 2
      out[3 * i - 1] = 0
      out[3 * i] = 0
    end
  else
    out[3 * i - 2] = 0
    out[3 * i - 1] = 0
    out[3 * i] = 0
  end
end
out[3 * n + 1] = first and 1 or 0
return out
`
  }
).withReturnType<ReadonlyArray<number>>()

// Windows a give-back looks through at most per counter, newest first: with a period far shorter than the
// lease, a reserve older than that many periods stays held until its lease ends.
const giveBackWindows = 1000

// KEYS: per counter its hash without the window. ARGV: lease ms, reservation id, then per counter: amount, period
// ms (0: none). After a reserve whose answer never came: it ran (if it did) within a lease before Redis's time
// now, in the window of its own time then, which the lease \`<id>|<amount>\` names (one window holds it); older, its
// lease has ended and holds nothing. Takes it back there, adding nothing spent. Returns per counter
// { 1, spent, held, window } where it was held (window -1 without a period), { 0, 0, 0, -1 } where nothing of the
// id was, { -1, 0, 0, window } where it was held on a counter that cannot be read (left as it is).
const giveBackScript = leaseScript(`${readableLua}
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[1])
local id = ARGV[2]
local function holds(z, member)
  return redis.call("TYPE", z)["ok"] == "zset" and redis.call("ZSCORE", z, member) ~= false
end
local out = {}
for i = 1, #KEYS do
  local amount = tonumber(ARGV[2 * i + 1])
  local period = tonumber(ARGV[2 * i + 2])
  local member = id .. "|" .. string.format("%.0f", amount)
  local h = false
  local window = -1
  if amount > 0 then
    if period > 0 then
      local last = math.floor(now / period)
      local first = math.max(math.floor((now - lease) / period), last - ${giveBackWindows} + 1)
      for w = last, first, -1 do
        local hw = KEYS[i] .. ":" .. string.format("%.0f", period) .. ":" .. string.format("%.0f", w)
        if holds(hw .. ":leases", member) then
          h = hw
          window = w
          break
        end
      end
    elseif holds(KEYS[i] .. ":leases", member) then
      h = KEYS[i]
    end
  end
  local at = 4 * i - 3
  if not h then
    out[at], out[at + 1], out[at + 2], out[at + 3] = 0, 0, 0, -1
  elseif not readable(h, h .. ":leases") then
    out[at], out[at + 1], out[at + 2], out[at + 3] = -1, 0, 0, window
  else
    if redis.call("ZREM", h .. ":leases", member) == 1 then redis.call("HINCRBY", h, "held", -amount) end
    local v = redis.call("HMGET", h, "spent", "held")
    out[at], out[at + 1], out[at + 2], out[at + 3] = 1, tonumber(v[1]) or 0, tonumber(v[2]) or 0, window
  end
end
return out
`).withReturnType<ReadonlyArray<number>>()

// KEYS: as settleScript. ARGV: lease ms, reservation id, then per counter the amount held. A
// lease of the id still running on a counter ends `lease` from now instead (one that has ended
// is left to be swept, one settled is gone); the counter then lives at least as long. Returns
// how many leases were moved.
const renewScript = leaseScript(`
local n = #KEYS / 2
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[1])
local moved = 0
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local amount = tonumber(ARGV[2 + i])
  if amount > 0 and redis.call("TYPE", z)["ok"] == "zset" then
    local member = ARGV[2] .. "|" .. string.format("%.0f", amount)
    local ends = tonumber(redis.call("ZSCORE", z, member))
    if ends and ends > now then
      redis.call("ZADD", z, "XX", now + lease, member)
      moved = moved + 1
      for _, key in ipairs({ h, z }) do
        local ttl = redis.call("PTTL", key)
        if ttl >= 0 and ttl < lease then redis.call("PEXPIRE", key, lease) end
      end
    end
  end
end
return moved
`).withReturnType<number>()

// KEYS: as reserveScript. ARGV: per counter its period ms (0: none). Returns
// { 0, spent1, held1, ..., now } in the windows of Redis's time, or { -i, now } for the first
// counter that cannot be read. A lease that has ended holds nothing, as for a reserve (which
// gives it back); the read writes nothing.
const readScript = Redis.script(
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

const levels = (reply: ReadonlyArray<unknown>, from: number, count: number): ReadonlyArray<Level> => {
  const out: Array<Level> = []
  for (let i = 0; i < count; i++) {
    out.push({ spent: Number(reply[from + 2 * i] ?? 0), held: Number(reply[from + 2 * i + 1] ?? 0) })
  }
  return out
}

// A stored record, or `undefined` when it does not parse or decode (edited by hand, written by a newer version).
const record = (json: string, disabled: boolean): KeyRecord | undefined => {
  let parsed: unknown
  try {
    parsed = JSON.parse(json)
  } catch {
    return undefined
  }
  const checked = decodeRecord(parsed)
  return Result.isSuccess(checked) ? { ...checked.success, disabled } : undefined
}

// The id a record names, when it is at least an object with a string id.
const storedId = (json: string): string | undefined => {
  try {
    const parsed: unknown = JSON.parse(json)
    const id = typeof parsed === "object" && parsed !== null ? (parsed as { id?: unknown }).id : undefined
    return typeof id === "string" ? id.slice(0, 64) : undefined
  } catch {
    return undefined
  }
}

/**
 * The Redis backend; every call goes through `guard` (its deadline, its outage report).
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* (options: {
  readonly prefix: string
  readonly guard: Guard
  readonly leaseMs: number
  /** The Redis keys of a key's rate-limit windows, by its id (none without it). */
  readonly limitKeys?: ((id: string) => ReadonlyArray<string>) | undefined
}) {
  const redis = yield* Redis.Redis
  const { prefix, guard, leaseMs: longestLease, limitKeys = () => [] } = options
  const keysKey = `${prefix}keys`
  const hashesKey = `${prefix}hashes`
  const disabledKey = `${prefix}disabled`
  const idsKey = `${prefix}ids`
  const directory = [keysKey, hashesKey] as const
  const reserveDirectory = [keysKey, hashesKey, disabledKey] as const
  const lookup = redis.eval(lookupScript)
  const lookupId = redis.eval(byIdScript)
  const insert = redis.eval(insertScript)
  const remove = redis.eval(removeScript)
  const addToIndex = redis.eval(indexScript)
  const pageOf = redis.eval(pageScript)
  const disable = redis.eval(disableScript)
  const reserve = redis.eval(reserveScript)
  const settle = redis.eval(settleScript)
  const giveBack = redis.eval(giveBackScript)
  const read = redis.eval(readScript)
  const renew = redis.eval(renewScript)

  const keyOf = (counter: Counter) => `${prefix}budget:${counter.name}`
  const counterKeys = (counters: ReadonlyArray<Counter>): Array<string> => {
    const keys: Array<string> = []
    for (const counter of counters) {
      const base = keyOf(counter)
      keys.push(base, `${base}:leases`)
    }
    return keys
  }
  const baseKeys = (counters: ReadonlyArray<Counter>): Array<string> => {
    const keys: Array<string> = []
    for (const counter of counters) keys.push(`${prefix}budget:${counter.base}`)
    return keys
  }
  // What a new or removed key's `clear` deletes: its counters without their window, then its rate limits.
  const clearedKeys = (id: string, counters: ReadonlyArray<Counter>): Array<string> => {
    const keys = baseKeys(counters)
    keys.push(...limitKeys(id))
    return keys
  }
  const periodsOf = (counters: ReadonlyArray<Counter>) => counters.map((counter) => counter.periodMs ?? 0)
  const countersOf = (charges: ReadonlyArray<Charge>) => charges.map((charge) => charge.counter)
  // The counter a script's `{ -i, now }` names, in the window of Redis's time.
  const unreadable = (counters: ReadonlyArray<Counter>, reply: ReadonlyArray<unknown>) => {
    const counter = retime(counters[-Number(reply[0]) - 1]!, Number(reply[1]))
    return new UnreadableCounter({ counter, key: keyOf(counter) })
  }

  // A window's counter outlives its window by the longest lease, then expires (ms since the epoch; 0: never).
  const expiryOf = (counter: Counter, leaseMs: number): number =>
    counter.periodMs === undefined || counter.window === undefined
      ? 0
      : (counter.window + 1) * counter.periodMs + leaseMs

  // The ids of keys stored without them in `ids` (by an earlier version, or its replicas still
  // running), added a page of HSCAN at a time (one HKEYS of 10,000,000 keys would hold the server
  // and the shared connection), at most `fillPages` pages by a listing: millions of keys take many
  // listings, each of bounded work, which say they are incomplete until the ids hold every key.
  // The scan goes on from where the last listing left it (a pass ends at cursor "0"); one listing
  // of this process at a time fills, the others answer from the ids as they are.
  let scanCursor = "0"
  const filling = yield* Semaphore.make(1)
  const scan = (cursor: string, pages: number): Effect.Effect<string, StoreError> =>
    Effect.flatMap(
      guard.call(
        "list",
        redis.send<readonly [string, ReadonlyArray<string>]>("HSCAN", keysKey, cursor, "COUNT", "500")
      ),
      ([next, flat]) => {
        const found: Array<string> = []
        for (let i = 0; i + 1 < flat.length; i += 2) found.push(String(flat[i]))
        const added = found.length === 0 ? Effect.void : guard.call("list", addToIndex(keysKey, idsKey, found))
        const after = String(next)
        return Effect.andThen(added, after === "0" || pages <= 1 ? Effect.succeed(after) : scan(after, pages - 1))
      }
    )
  const index = filling.withPermitsIfAvailable(1)(
    Effect.map(
      Effect.suspend(() => scan(scanCursor, fillPages)),
      (next) => {
        scanCursor = next
      }
    )
  )

  const readPage = (after: string | undefined, count: number) =>
    guard.call("list", pageOf(keysKey, disabledKey, idsKey, after ?? "", count))

  // A record that is there but cannot be read is not "no such key".
  const fromJson = (
    json: string,
    disabled: boolean,
    id: string | undefined
  ): Effect.Effect<KeyRecord, UnreadableRecord> => {
    const found = record(json, disabled)
    return found !== undefined
      ? Effect.succeed(found)
      : Effect.fail(new UnreadableRecord({ id: id ?? storedId(json), json }))
  }
  // Read by a secret's hash (`sha256`), the record must be of that secret: the entry of a deleted key's
  // secret left in `hashes` (its record could not be read, so its hash was not known to remove it) would
  // otherwise let that secret in as a later key of its id.
  const fromPair =
    (id: string | undefined, sha256?: string) =>
    (reply: readonly [string, number] | null): Effect.Effect<KeyRecord | undefined, UnreadableRecord> => {
      if (reply === null || !Array.isArray(reply)) return Effect.undefined
      const found = fromJson(String(reply[0]), Number(reply[1]) === 1, id)
      return sha256 === undefined
        ? found
        : Effect.map(found, (record) => (record.sha256 === sha256 ? record : undefined))
    }

  return {
    local: false,
    byHash: (sha256) =>
      Effect.flatMap(
        guard.call("lookup", lookup(hashesKey, keysKey, disabledKey, sha256)),
        fromPair(undefined, sha256)
      ),
    byId: (id) => Effect.flatMap(guard.call("byId", lookupId(keysKey, disabledKey, id)), fromPair(id)),
    insert: (key, maxKeys, counters) =>
      Effect.map(
        guard.call(
          "insert",
          insert(
            keysKey,
            hashesKey,
            idsKey,
            disabledKey,
            clearedKeys(key.id, counters),
            key.id,
            key.sha256,
            encodeRecord(key),
            maxKeys,
            periodsOf(counters)
          )
        ),
        (reply) => String(reply) as InsertResult
      ),
    remove: (id, read, counters) =>
      Effect.map(
        guard.call(
          "remove",
          remove(
            keysKey,
            hashesKey,
            disabledKey,
            idsKey,
            clearedKeys(id, counters),
            id,
            "sha256" in read ? read.sha256 : "",
            "json" in read ? read.json : "",
            periodsOf(counters)
          )
        ),
        (reply) => String(reply) as "removed" | "missing" | "changed"
      ),
    page: (after, count) =>
      readPage(after, count).pipe(
        Effect.flatMap((reply) =>
          Number(reply[1]) === 1 ? Effect.andThen(index, readPage(after, count)) : Effect.succeed(reply)
        ),
        Effect.map((reply) => {
          const records: Array<KeyRecord> = []
          const unreadable: Array<string> = []
          let last: string | undefined
          for (let i = 2; i + 2 < reply.length; i += 3) {
            const id = String(reply[i])
            const json = String(reply[i + 1])
            last = id
            // Gone since the ids were read: not listed.
            if (json === "") continue
            const found = record(json, Number(reply[i + 2]) === 1)
            if (found !== undefined) records.push(found)
            else unreadable.push(id)
          }
          return Number(reply[1]) === 1
            ? { records, unreadable, last, more: Number(reply[0]) === 1, incomplete: true }
            : { records, unreadable, last, more: Number(reply[0]) === 1 }
        })
      ),
    setDisabled: (id, flag) =>
      Effect.flatMap(guard.call("disable", disable(keysKey, disabledKey, id, flag)), (json) =>
        json === null ? Effect.undefined : fromJson(String(json), flag, id)
      ),
    // Redis's own time, not the caller's `now`, sets the windows and the leases.
    // The charges of one request are of one key: its owner is the first charge's that has one.
    reserve: (id, charges: ReadonlyArray<Charge>, leaseMs, _now, key?: Owner) => {
      const args: Array<number> = []
      for (const charge of charges) args.push(charge.counter.limit, charge.amount, charge.counter.periodMs ?? 0)
      const counters = countersOf(charges)
      return Effect.flatMap(
        guard.call("reserve", reserve(baseKeys(counters), reserveDirectory, leaseMs, id, args, key)),
        (reply): Effect.Effect<ReserveResult, UnreadableCounter> => {
          const index = Number(reply[0])
          const now = Number(reply[reply.length - 1])
          if (-index === charges.length + 2) return Effect.succeed({ _tag: "Disabled", now })
          if (-index === charges.length + 1) return Effect.succeed({ _tag: "Gone", now })
          if (index < 0) return Effect.fail(unreadable(counters, reply))
          return Effect.succeed(
            index === 0
              ? { _tag: "Reserved", levels: levels(reply, 1, charges.length), now }
              : {
                  _tag: "Exceeded",
                  index: index - 1,
                  level: { spent: Number(reply[1]), held: Number(reply[2]) },
                  before: levels(reply, 3, index - 1),
                  now
                }
          )
        }
      )
    },
    settle: (id, charges, actual, _now, once) => {
      // Per counter its amounts, then per counter its owner.
      const args: Array<number | string> = []
      for (let i = 0; i < charges.length; i++) {
        const { counter, amount } = charges[i]!
        args.push(amount, Math.max(0, actual[i] ?? 0), expiryOf(counter, longestLease))
      }
      for (const { owner } of charges) args.push(owner?.id ?? "", owner?.sha256 ?? "")
      return Effect.map(
        guard.call("settle", settle(counterKeys(countersOf(charges)), directory, id, once, longestLease, args)),
        (reply) => ({
          levels: charges.map(({ counter }, i): Level | UnreadableCounter | undefined => {
            const found = Number(reply[3 * i])
            return found === 1
              ? { spent: Number(reply[3 * i + 1] ?? 0), held: Number(reply[3 * i + 2] ?? 0) }
              : found === 2
                ? undefined
                : new UnreadableCounter({ counter, key: keyOf(counter) })
          }),
          applied: Number(reply[3 * charges.length]) === 1
        })
      )
    },
    giveBack: (id, charges, leaseMs, _now) => {
      const args: Array<number> = []
      for (const { counter, amount } of charges) args.push(amount, counter.periodMs ?? 0)
      return Effect.map(guard.call("giveBack", giveBack(baseKeys(countersOf(charges)), leaseMs, id, args)), (reply) =>
        charges.map(({ counter }, i): GivenBack => {
          const found = Number(reply[4 * i])
          if (found === 0) return undefined
          const window = Number(reply[4 * i + 3])
          const held =
            counter.periodMs === undefined || window < 0 ? counter : retime(counter, window * counter.periodMs)
          if (found < 0) return new UnreadableCounter({ counter: held, key: keyOf(held) })
          return { counter: held, level: { spent: Number(reply[4 * i + 1]), held: Number(reply[4 * i + 2]) } }
        })
      )
    },
    renew: (id, charges, leaseMs) =>
      Effect.asVoid(
        guard.call(
          "renew",
          renew(
            counterKeys(countersOf(charges)),
            leaseMs,
            id,
            charges.map((charge) => charge.amount)
          )
        )
      ),
    read: (counters, _now) =>
      Effect.flatMap(
        guard.call(
          "read",
          read(
            baseKeys(counters),
            counters.map((counter) => counter.periodMs ?? 0)
          )
        ),
        (reply) =>
          Number(reply[0]) < 0
            ? Effect.fail(unreadable(counters, reply))
            : Effect.succeed({ levels: levels(reply, 1, counters.length), now: Number(reply[reply.length - 1]) })
      )
  } satisfies Backend
})
