/**
 * The key store's options and their checks: every number through `Input.ts` (a
 * `OptionError` naming the field at layer build, a 400 naming it for an admin request),
 * unknown fields refused, ids and model names of a bounded shape. The same checks read
 * the keys of a config file, of an admin request and of Redis.
 *
 * @internal
 */
import { Duration, Result } from "effect"
import type { Models } from "../../Gateway.js"
import * as Input from "../../Input.js"
import { textIssue } from "../../stats/labels.js"
import { unknownModel } from "../models.js"
import type { Options } from "./KeyStore.js"
import { sha256Pattern } from "./secret.js"

/**
 * A budget of one scope: tokens (input and output), money (US dollars, from the price
 * table), or both. With `period` it starts again at every multiple of the period since
 * the Unix epoch (`"1 day"`: at 00:00 UTC) by the Redis server's clock on a Redis store (every
 * replica starts it at the same instant, whatever its own clock), by the process's `Clock` in
 * memory; without, it never resets.
 *
 * @internal
 */
export interface Budget {
  readonly tokens?: number | undefined
  /** US dollars, at least 0.000000001 (budgets count whole nano-dollars). */
  readonly usd?: number | undefined
  readonly period?: Input.DurationInput | undefined
}

/**
 * @internal
 */
export interface ResolvedBudget {
  readonly tokens: number | undefined
  readonly usd: number | undefined
  readonly periodMs: number | undefined
}

/**
 * What a key may do, as an admin creates it or a config file lists it.
 *
 * @internal
 */
export interface KeyPolicy {
  readonly name?: string | undefined
  readonly team?: string | undefined
  readonly allowedModels?: ReadonlyArray<string> | undefined
  readonly rpm?: number | undefined
  readonly tpm?: number | undefined
  readonly budget?: Budget | undefined
  /**
   * Budgets by model, each named as a request's `model` (a domain or `provider/model`). Each
   * caps the upstream models behind its name, whichever name a request reaches them by: a
   * domain's is charged for a `provider/model` its chain may call, or another domain calling
   * one of them, and a `provider/model`'s by the domains that may call it.
   */
  readonly modelBudgets?: { readonly [model: string]: Budget } | undefined
}

/**
 * A key of the config file: its policy, its id and the SHA-256 of its secret (never the
 * secret itself).
 *
 * @internal
 */
export interface KeyDefinition extends KeyPolicy {
  readonly id: string
  readonly sha256: string
  /** What admins see of the secret (`sk-orch-ab12`). Default: none. */
  readonly prefix?: string | undefined
  readonly disabled?: boolean | undefined
}

/**
 * A key as stored: the checked policy and its bookkeeping.
 *
 * @internal
 */
export interface KeyRecord {
  readonly id: string
  readonly name: string
  readonly sha256: string
  readonly prefix: string | undefined
  readonly team: string | undefined
  readonly allowedModels: ReadonlyArray<string> | undefined
  readonly rpm: number | undefined
  readonly tpm: number | undefined
  readonly budget: ResolvedBudget | undefined
  readonly modelBudgets: Readonly<Record<string, ResolvedBudget>> | undefined
  readonly disabled: boolean
  /** Milliseconds since the epoch; 0 for keys of the config file. */
  readonly createdAt: number
  readonly source: "config" | "store"
}

/**
 * Prices of a model in US dollars per million tokens.
 *
 * @internal
 */
export interface Price {
  readonly input: number
  readonly output: number
}

/**
 * The options after their checks.
 *
 * @internal
 */
export interface Resolved {
  readonly keys: ReadonlyArray<KeyRecord>
  readonly teams: ReadonlyMap<string, ResolvedBudget>
  /** Every team declared under `teams` (with a budget or not): the only ones a key may name. */
  readonly teamNames: ReadonlySet<string>
  readonly prices: ReadonlyMap<string, Price>
  readonly rateLimitWait: Duration.Duration
  readonly reservationTtlMs: number
  readonly cacheTtlMs: number
  readonly maxKeys: number
}

type Checked<A> = Input.Checked<A>

const idPattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const modelPattern = /^[\x21-\x7e]{1,200}$/

const fail = (path: string, message: string): Checked<never> => Result.fail({ path, message })

const isObject = (input: unknown): input is Record<string, unknown> =>
  typeof input === "object" && input !== null && !Array.isArray(input)

const fields = (path: string, input: unknown, known: ReadonlySet<string>): Checked<Record<string, unknown>> => {
  if (!isObject(input)) return fail(path, "expected an object")
  const unknown = Input.misspeltKey(input, known, path === "" ? "" : `${path}.`, "field")
  return unknown === undefined ? Result.succeed(input) : Result.fail(unknown)
}

const at = (path: string, field: string) => (path === "" ? field : `${path}.${field}`)

// A name given as a key (a model's, a team's) in a path: as written when it is one, else quoted and bounded (one
// with a line break forged a log line; one of a megabyte went whole into an admin's 400).
const named = (path: string, name: string, pattern: RegExp) => at(path, pattern.test(name) ? name : Input.shown(name))

/**
 * Checks an id (of a key or a team): 1 to 64 of `[A-Za-z0-9._-]`, starting with a letter or digit.
 *
 * @internal
 */
export const id = (path: string, input: unknown): Checked<string> =>
  typeof input === "string" && idPattern.test(input)
    ? Result.succeed(input)
    : fail(path, "expected 1 to 64 of A-Z a-z 0-9 . _ - starting with a letter or digit")

const model = (path: string, input: unknown): Checked<string> =>
  typeof input === "string" && modelPattern.test(input)
    ? Result.succeed(input)
    : fail(path, "expected a model name: 1 to 200 printable characters without spaces")

// Ids and model names are ASCII by their patterns; a name or a prefix is any text, and one without
// a UTF-8 form (a lone surrogate) would read as another in logs, headers and Redis.
const text = (path: string, input: unknown, max: number): Checked<string> => {
  if (typeof input !== "string" || input.length === 0 || input.length > max || /\p{Cc}/u.test(input)) {
    return fail(path, `expected a non-empty string of at most ${max} characters`)
  }
  const lone = textIssue(input, path)
  return lone === undefined ? Result.succeed(input) : Result.fail(lone)
}

// `periodMs` (milliseconds): the field a key read back shows, so that it can be given back as it is.
const budgetFields: ReadonlySet<string> = new Set(["tokens", "usd", "period", "periodMs"])

// The ledger counts money in whole nano-dollars: a smaller budget would round to a limit of $0.
const usd = (path: string, input: unknown): Checked<number> =>
  Result.flatMap(Input.number(path, input, { min: 0, minExclusive: true, max: 1e6 }), (amount) =>
    amount >= 1e-9
      ? Result.succeed(amount)
      : fail(
          path,
          `expected at least 0.000000001 (one nano-dollar, the smallest amount a budget counts), got ${amount}`
        )
  )

/**
 * Checks a budget; at least one of `tokens` and `usd`.
 *
 * @internal
 */
export const budget = (path: string, input: unknown): Checked<ResolvedBudget> =>
  Result.flatMap(fields(path, input, budgetFields), (b) => {
    if (b.tokens === undefined && b.usd === undefined) return fail(path, "expected tokens, usd or both")
    if (b.period !== undefined && b.periodMs !== undefined) {
      return fail(at(path, "periodMs"), "give period or periodMs (milliseconds), not both")
    }
    const periodField = b.period === undefined && b.periodMs !== undefined ? "periodMs" : "period"
    const periodInput = b.period ?? b.periodMs
    if (periodField === "periodMs" && typeof periodInput !== "number") {
      return fail(at(path, "periodMs"), `expected milliseconds, got ${Input.kindOf(periodInput)}`)
    }
    return Result.map(
      Input.all([
        Input.optional(b.tokens, (n) => Input.positiveInt(at(path, "tokens"), n, 1e15)),
        Input.optional(b.usd, (n) => usd(at(path, "usd"), n)),
        Input.optional(periodInput, (d) =>
          Result.flatMap(Input.duration(at(path, periodField), d), (period) => {
            const ms = Duration.toMillis(period)
            // A period's counters expire in Redis a period (plus the longest lease) after its start.
            return Number.isInteger(ms) && ms >= 1000 && ms <= Input.maxRedisMillis
              ? Result.succeed(ms)
              : fail(
                  at(path, periodField),
                  `expected whole milliseconds from 1 second to ${Input.maxRedisMillis} ms (about 35,678 years), got ${ms}`
                )
          })
        )
      ]),
      ([tokens, usd, periodMs]) => ({ tokens, usd, periodMs })
    )
  })

const optionalBudget = (path: string, input: unknown): Checked<ResolvedBudget | undefined> =>
  input === undefined ? Result.succeed(undefined) : budget(path, input)

const policyFields = ["name", "team", "allowedModels", "rpm", "tpm", "budget", "modelBudgets"] as const

/**
 * The policy part of a key, checked.
 *
 * @internal
 */
export type CheckedPolicy = Omit<KeyRecord, "id" | "sha256" | "prefix" | "disabled" | "createdAt" | "source">

const policy = (path: string, b: Record<string, unknown>, fallbackName: string): Checked<CheckedPolicy> => {
  let allowedModels: Checked<ReadonlyArray<string> | undefined> = Result.succeed(undefined)
  if (b.allowedModels !== undefined) {
    if (!Array.isArray(b.allowedModels) || b.allowedModels.length > 1000) {
      allowedModels = fail(at(path, "allowedModels"), "expected an array of at most 1000 model names")
    } else {
      const out: Array<string> = []
      for (let i = 0; i < b.allowedModels.length; i++) {
        const checked = model(`${at(path, "allowedModels")}[${i}]`, b.allowedModels[i])
        if (Result.isFailure(checked)) return Result.fail(checked.failure)
        out.push(checked.success)
      }
      allowedModels = Result.succeed(out)
    }
  }
  let modelBudgets: Checked<Record<string, ResolvedBudget> | undefined> = Result.succeed(undefined)
  if (b.modelBudgets !== undefined) {
    if (!isObject(b.modelBudgets) || Object.keys(b.modelBudgets).length > 1000) {
      modelBudgets = fail(at(path, "modelBudgets"), "expected an object of at most 1000 budgets by model")
    } else {
      const out: Record<string, ResolvedBudget> = Object.create(null)
      for (const [name, value] of Object.entries(b.modelBudgets)) {
        const where = named(at(path, "modelBudgets"), name, modelPattern)
        const checked = Result.flatMap(model(where, name), () => budget(where, value))
        if (Result.isFailure(checked)) return Result.fail(checked.failure)
        out[name] = checked.success
      }
      modelBudgets = Result.succeed(out)
    }
  }
  return Result.map(
    Input.all([
      b.name === undefined ? Result.succeed(fallbackName) : text(at(path, "name"), b.name, 200),
      Input.optional(b.team, (t) => id(at(path, "team"), t)),
      allowedModels,
      Input.optional(b.rpm, (n) => Input.positiveInt(at(path, "rpm"), n, 1e9)),
      Input.optional(b.tpm, (n) => Input.positiveInt(at(path, "tpm"), n, 1e12)),
      optionalBudget(at(path, "budget"), b.budget),
      modelBudgets
    ]),
    ([name, team, allowed, rpm, tpm, keyBudget, byModel]) => ({
      name,
      team,
      allowedModels: allowed,
      rpm,
      tpm,
      budget: keyBudget,
      modelBudgets: byModel
    })
  )
}

const createFields: ReadonlySet<string> = new Set(["id", ...policyFields])

/**
 * The message for a team not declared under `teams`.
 *
 * @internal
 */
export const unknownTeam = (team: string, declared: ReadonlySet<string>): string => {
  // Thousands of teams would make a message (an admin's 400, a startup error) of hundreds of KB.
  const shown: Array<string> = []
  for (const name of declared) {
    if (shown.length === teamsShown) break
    // A team declared under a name that is no id (refused too) is listed quoted and bounded.
    shown.push(idPattern.test(name) ? name : Input.shown(name))
  }
  const more = declared.size - shown.length
  return `unknown team "${team}": declare it under the key store's teams (${
    declared.size === 0 ? "none is declared" : `declared: ${shown.join(", ")}${more > 0 ? ` and ${more} more` : ""}`
  }; a team without a budget is {})`
}

const teamsShown = 20

/**
 * Checks an admin's request to create a key (`id` optional: `made` then, which names the key without a `name`).
 *
 * @internal
 */
export const createRequest = (
  input: unknown,
  made: string
): Checked<{
  readonly id: string
  readonly policy: ReturnType<typeof policy> extends Checked<infer P> ? P : never
}> =>
  // The admin route's body: a top-level non-object is the body's fault, named as the chat route names it.
  !isObject(input)
    ? fail("body", `expected a JSON object, got ${Input.kindOf(input)}`)
    : Result.flatMap(fields("", input, createFields), (b) =>
        Result.flatMap(
          Input.optional(b.id, (i) => id("id", i)),
          (keyId = made) => Result.map(policy("", b, keyId), (checked) => ({ id: keyId, policy: checked }))
        )
      )

const definitionFields: ReadonlySet<string> = new Set(["id", "sha256", "prefix", "disabled", ...policyFields])

const definition = (path: string, input: unknown): Checked<KeyRecord> =>
  Result.flatMap(fields(path, input, definitionFields), (b) =>
    Result.flatMap(
      Input.all([
        id(at(path, "id"), b.id),
        typeof b.sha256 === "string" && sha256Pattern.test(b.sha256)
          ? Result.succeed(b.sha256)
          : fail(at(path, "sha256"), "expected the SHA-256 of the secret as 64 lowercase hex characters"),
        Input.optional(b.prefix, (p) => text(at(path, "prefix"), p, 16)),
        b.disabled === undefined || typeof b.disabled === "boolean"
          ? Result.succeed(b.disabled === true)
          : fail(at(path, "disabled"), "expected true or false")
      ]),
      ([keyId, sha256, prefix, disabled]) =>
        Result.map(
          policy(path, b, keyId),
          (checked): KeyRecord => ({
            id: keyId,
            sha256,
            prefix,
            disabled,
            createdAt: 0,
            source: "config",
            ...checked
          })
        )
    )
  )

const priceFields: ReadonlySet<string> = new Set(["input", "output"])

const price = (path: string, input: unknown): Checked<Price> =>
  Result.flatMap(fields(path, input, priceFields), (p) =>
    Result.map(
      Input.all([
        Input.number(at(path, "input"), p.input, { min: 0, max: 1e6 }),
        Input.number(at(path, "output"), p.output, { min: 0, max: 1e6 })
      ]),
      ([input, output]) => ({ input, output })
    )
  )

const optionFields: ReadonlySet<string> = new Set([
  "keys",
  "teams",
  "prices",
  "rateLimitWait",
  "reservationTtl",
  "cacheTtl",
  "maxKeys"
])

/**
 * The fields `KeyStore.layerRedis` adds.
 *
 * @internal
 */
export const redisFields: ReadonlySet<string> = new Set([...optionFields, "prefix", "onStoreError", "redis"])

const minReservationTtlMs = 100

// A file of many keys may hold many mistakes: each is told at once (the first `maxIssues`), so that
// a start fails once rather than once a mistake.
const maxIssues = 20

/** The issues of a check, kept up to `maxIssues`, and all counted. */
class Issues {
  readonly shown: Array<Input.Issue> = []
  total = 0
  add(issue: Input.Issue): void {
    this.total++
    if (this.shown.length < maxIssues) this.shown.push(issue)
  }
  /** One issue: the first, with the others shown (one alone reads as it always did). */
  get issue(): Input.Issue | undefined {
    const [first, ...rest] = this.shown
    if (first === undefined || this.total === 1) return first
    return {
      path: first.path,
      message: first.message,
      others: { shown: rest, unshown: this.total - this.shown.length }
    }
  }
}

/**
 * Checks the options; every wrong entry (a key, a team, a price, an option) is named, the first
 * 20 of them.
 *
 * @internal
 */
export const check = (input: Options, known: ReadonlySet<string> = optionFields): Checked<Resolved> =>
  Result.flatMap(fields("", input ?? {}, known), (o) => {
    const issues = new Issues()
    const keys: Array<KeyRecord> = []
    // The index of each key in the file, for its team's issue.
    const places: Array<number> = []
    if (o.keys !== undefined) {
      if (!Array.isArray(o.keys)) {
        issues.add({ path: "keys", message: "expected an array of keys" })
      } else {
        const ids = new Set<string>()
        const hashes = new Set<string>()
        for (let i = 0; i < o.keys.length; i++) {
          const checked = definition(`keys[${i}]`, o.keys[i])
          if (Result.isFailure(checked)) {
            issues.add(checked.failure)
            continue
          }
          const key = checked.success
          if (ids.has(key.id)) {
            issues.add({ path: `keys[${i}].id`, message: `the id "${key.id}" is given twice` })
          } else if (hashes.has(key.sha256)) {
            issues.add({ path: `keys[${i}].sha256`, message: "the same secret is given twice" })
          } else {
            ids.add(key.id)
            hashes.add(key.sha256)
            keys.push(key)
            places.push(i)
          }
        }
      }
    }
    const teams = new Map<string, ResolvedBudget>()
    const teamNames = new Set<string>()
    let teamsRead = true
    if (o.teams !== undefined) {
      if (!isObject(o.teams)) {
        teamsRead = false
        issues.add({ path: "teams", message: "expected an object of teams by id" })
      } else {
        for (const [team, value] of Object.entries(o.teams)) {
          const where = named("teams", team, idPattern)
          const checked = Result.flatMap(id(where, team), () =>
            Result.flatMap(fields(where, value, new Set(["budget"])), (t) =>
              optionalBudget(at(where, "budget"), t.budget)
            )
          )
          // A team declared with a wrong budget is still declared: its keys are not told they name none.
          teamNames.add(team)
          if (Result.isFailure(checked)) issues.add(checked.failure)
          else if (checked.success !== undefined) teams.set(team, checked.success)
        }
      }
    }
    // A key's team must be declared: a misspelt one would silently escape the team's budget.
    for (let i = 0; i < keys.length && teamsRead; i++) {
      const team = keys[i]!.team
      if (team !== undefined && !teamNames.has(team)) {
        issues.add({ path: `keys[${places[i]}].team`, message: unknownTeam(team, teamNames) })
      }
    }
    const prices = new Map<string, Price>()
    if (o.prices !== undefined) {
      if (!isObject(o.prices)) {
        issues.add({ path: "prices", message: "expected an object of prices by model" })
      } else {
        for (const [name, value] of Object.entries(o.prices)) {
          const where = named("prices", name, modelPattern)
          const checked = Result.flatMap(model(where, name), () => price(where, value))
          if (Result.isFailure(checked)) issues.add(checked.failure)
          else prices.set(name, checked.success)
        }
      }
    }
    const settings = [
      Input.duration("rateLimitWait", Input.orDefault(o.rateLimitWait, 0), { allowZero: true }),
      // A lease's end is a score and a PEXPIRE on Redis, and a sleep of the memory store.
      Result.flatMap(
        Input.wholeMillis("reservationTtl", Input.orDefault(o.reservationTtl, "15 minutes"), Input.maxRedisMillis),
        // Shorter, a lease ends about as its reserve answers (on Redis), holding nothing for the call,
        // and the gateway renews every running request's a quarter of it apart.
        (ms) =>
          ms >= minReservationTtlMs
            ? Result.succeed(ms)
            : fail("reservationTtl", `expected at least ${minReservationTtlMs} ms, got ${ms} ms`)
      ),
      Input.duration("cacheTtl", Input.orDefault(o.cacheTtl, "2 seconds"), { allowZero: true }),
      Input.positiveInt("maxKeys", Input.orDefault(o.maxKeys, 100_000), 10_000_000)
    ] as const
    for (const setting of settings as ReadonlyArray<Checked<unknown>>)
      if (Result.isFailure(setting)) issues.add(setting.failure)
    const issue = issues.issue
    if (issue !== undefined) return Result.fail(issue)
    return Result.map(Input.all(settings), ([rateLimitWait, reservationTtl, cacheTtl, maxKeys]) => ({
      keys,
      teams,
      teamNames,
      prices,
      rateLimitWait,
      reservationTtlMs: reservationTtl,
      cacheTtlMs: Duration.toMillis(cacheTtl),
      maxKeys
    }))
  })

/**
 * The issue of a key's `allowedModels` or `modelBudgets` naming a model the gateway does not
 * serve (fields named under `path`), or `undefined`.
 *
 * @internal
 */
export const policyModels = (
  models: Models,
  path: string,
  policy: Pick<KeyRecord, "allowedModels" | "modelBudgets">
): Input.Issue | undefined => {
  const allowed = policy.allowedModels ?? []
  for (let i = 0; i < allowed.length; i++) {
    const issue = unknownModel(models, "allowed", `${at(path, "allowedModels")}[${i}]`, allowed[i]!)
    if (issue !== undefined) return issue
  }
  for (const name of Object.keys(policy.modelBudgets ?? {})) {
    const issue = unknownModel(models, "budget", named(at(path, "modelBudgets"), name, modelPattern), name)
    if (issue !== undefined) return issue
  }
  return undefined
}

/**
 * The issue of the configuration's keys or prices naming a model the gateway does not
 * serve, or `undefined`.
 *
 * @internal
 */
export const configModels = (resolved: Resolved, models: Models): Input.Issue | undefined => {
  const issues = new Issues()
  for (let i = 0; i < resolved.keys.length; i++) {
    const issue = policyModels(models, `keys[${i}]`, resolved.keys[i]!)
    if (issue !== undefined) issues.add(issue)
  }
  for (const name of resolved.prices.keys()) {
    const issue = unknownModel(models, "price", named("prices", name, modelPattern), name)
    if (issue !== undefined) issues.add(issue)
  }
  return issues.issue
}

// The most milliseconds from the epoch a Date holds.
const maxDateMillis = 8.64e15

/**
 * A stored key read back (from Redis): checked again, since another process or version
 * wrote it.
 *
 * @internal
 */
export const decodeRecord = (input: unknown): Checked<KeyRecord> => {
  if (!isObject(input)) return fail("(record)", "expected an object")
  const { createdAt, source, ...rest } = input
  const budgetIn = (b: unknown) =>
    isObject(b) ? { tokens: b.tokens, usd: b.usd, ...(b.periodMs === undefined ? {} : { period: b.periodMs }) } : b
  const modelBudgets = isObject(rest.modelBudgets)
    ? Object.fromEntries(Object.entries(rest.modelBudgets).map(([k, v]) => [k, budgetIn(v)]))
    : rest.modelBudgets
  const normalized = {
    ...rest,
    ...(rest.budget === undefined ? {} : { budget: budgetIn(rest.budget) }),
    ...(modelBudgets === undefined ? {} : { modelBudgets })
  }
  for (const [k, v] of Object.entries(normalized)) if (v === null) delete (normalized as Record<string, unknown>)[k]
  // Within a Date's range: past it there is no ISO time to show an admin, and every listing holding it failed.
  return Result.flatMap(definition("(record)", normalized), (record) =>
    typeof createdAt === "number" && Number.isFinite(createdAt) && Math.abs(createdAt) <= maxDateMillis
      ? Result.succeed({ ...record, createdAt, source: source === "config" ? "config" : "store" })
      : fail("(record).createdAt", "expected milliseconds since the epoch")
  )
}

/**
 * A record as JSON for the store (budgets with `periodMs`, absent fields left out).
 *
 * @internal
 */
export const encodeRecord = (record: KeyRecord): string => JSON.stringify(record)
