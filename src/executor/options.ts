/**
 * A call's options checked (`ExecuteOptions` into `ResolvedOptions`): the deadlines as
 * durations, `retry: true` as the executor's policy. Options that set no deadline and no
 * retry are the executor's defaults as they are; the others are checked once per options
 * object and values, so a caller that reuses its options pays for the checks once, and one
 * that changes a field between calls has it checked again.
 *
 * @internal
 */
import { type Duration, Effect, Result } from "effect"
import type { ExecuteOptions, ResolvedOptions } from "../Executor.js"
import * as Input from "../Input.js"
import { decodeRetry, RetryPolicy } from "../Policy.js"
import type { Engine } from "../policy/engine.js"
import { labelIssue } from "../stats/labels.js"
import { issueError } from "./refusal.js"

/**
 * A call's options checked, or the issue that names the bad one.
 *
 * @internal
 */
// The per-call options that take true or false.
const flags = ["cache", "allowStale"] as const

/**
 * The per-call options that are a value of one kind, a stream's included.
 *
 * @internal
 */
export const kinds = [
  ["domain", "string"],
  ["provider", "object"],
  ["onRetry", "function"]
] as const

export type ResolveSync = (
  callOptions: ExecuteOptions,
  known?: ReadonlySet<string>,
  /** Options without `retry` take the executor's policy (`executeWithRetry`), not none. */
  retryByDefault?: boolean
) => Result.Result<ResolvedOptions, Input.Issue>

/**
 * The keys of `ExecuteOptions`.
 *
 * @internal
 */
export const executeKeys: ReadonlySet<string> = new Set([
  "timeout",
  "totalTimeout",
  "retry",
  "domain",
  "provider",
  "cache",
  "allowStale",
  "onRetry"
])

/**
 * The keys of `ManyOptions`.
 *
 * @internal
 */
export const manyKeys: ReadonlySet<string> = new Set([...executeKeys, "concurrency", "maxRequests"])

/**
 * The issue of a provider's `maxConcurrency` (the slots the engine gives its calls) that is
 * neither absent nor a positive integer: 0 or -1 queued every call for a slot until its
 * deadline (for ever without one), `NaN` bounded nothing, 1.5 was 1.
 *
 * @internal
 */
export const slotIssue = (provider: { readonly maxConcurrency?: unknown }, path: string): Input.Issue | undefined => {
  const max = provider.maxConcurrency
  if (max === undefined) return undefined
  const checked = Input.positiveInt(path, max)
  return Result.isFailure(checked) ? checked.failure : undefined
}

/**
 * The issue of a provider given to a call (a `provider` option, a stream step's) whose
 * `maxConcurrency` is no positive integer, or differs from the limit its name already has
 * (`claimSlot`, the engine's): one name is one provider, with one set of slots.
 *
 * @internal
 */
export const providerSlotIssue = (
  claimSlot: Engine["claimSlot"],
  target: { readonly name?: unknown; readonly maxConcurrency?: unknown },
  path: string
): Input.Issue | undefined =>
  slotIssue(target, path) ??
  (typeof target.name === "string"
    ? claimSlot(target.name, target.maxConcurrency as number | undefined, path)
    : undefined)

/**
 * What a call's options that threw while they were read are refused with: the field whose
 * getter (or `Proxy` trap) throws, read again one by one to name it, else `options`. It
 * carries what was thrown as its `cause`: the options are not read again after it.
 *
 * @internal
 */
export const thrownIssue = (options: unknown, thrown: unknown): Input.Issue => {
  const read = typeof options === "object" && options !== null ? Input.readFields(options) : undefined
  return read !== undefined && Result.isFailure(read)
    ? read.failure
    : { path: "options", message: `reading them threw: ${Input.thrownMessage(thrown)}`, cause: thrown }
}

// A call's options as they were checked, and the outcome.
interface Checked {
  readonly timeout: unknown
  readonly totalTimeout: unknown
  readonly retry: unknown
  /** The fields of a `retry` object that may change in place (not frozen), as they were checked. */
  readonly retryFields: ReadonlyArray<unknown> | undefined
  readonly resolved: Result.Result<ResolvedOptions, Input.Issue>
}

const retryKeys = Object.keys(RetryPolicy.fields)

// A policy this module's checks froze (or one its caller froze) cannot change; another object can
// (`options.retry.maxAttempts = 5`): its fields are kept to be compared.
const retryFieldsOf = (retry: unknown): ReadonlyArray<unknown> | undefined =>
  typeof retry === "object" && retry !== null && !Object.isFrozen(retry)
    ? retryKeys.map((key) => (retry as Record<string, unknown>)[key])
    : undefined

// Compared without allocating: no key added (an unknown one is refused), none changed.
const sameRetry = (fields: ReadonlyArray<unknown> | undefined, retry: unknown): boolean => {
  if (fields === undefined) return true
  let keys = 0
  for (const _ in retry as object) if (++keys > retryKeys.length) return false
  for (let i = 0; i < retryKeys.length; i++) {
    if ((retry as Record<string, unknown>)[retryKeys[i]!] !== fields[i]) return false
  }
  return true
}

/**
 * Builds the checks of an executor's per-call options, over its default deadline and policy.
 *
 * @internal
 */
export const make = (env: {
  readonly defaultTimeout: Duration.Duration | undefined
  readonly basePolicy: RetryPolicy
  /** The engine's check of a provider's limit against its name's (`policy/engine.ts`). */
  readonly claimSlot: Engine["claimSlot"]
}) => {
  const { defaultTimeout, basePolicy, claimSlot } = env

  // By options object, with the values it was checked with: a field given another value since
  // (`options.timeout = 5000` between two calls) is checked again, not answered the first check.
  const resolveCache = new WeakMap<ExecuteOptions, Checked>()
  const defaults: ResolvedOptions = { timeout: defaultTimeout, totalTimeout: undefined, retry: undefined }
  const defaultsResult = Result.succeed(defaults)

  // A getter (or a `Proxy` trap) that throws is an issue naming its field, not a defect of the
  // call: the try costs nothing until something throws.
  const resolveSync = (
    callOptions: ExecuteOptions,
    known: ReadonlySet<string> = executeKeys,
    retryByDefault = false
  ): Result.Result<ResolvedOptions, Input.Issue> => {
    try {
      return resolveUnsafe(callOptions, known, retryByDefault)
    } catch (thrown) {
      return Result.fail(thrownIssue(callOptions, thrown))
    }
  }

  const resolveUnsafe = (
    callOptions: ExecuteOptions,
    known: ReadonlySet<string>,
    retryByDefault: boolean
  ): Result.Result<ResolvedOptions, Input.Issue> => {
    // Before the defaults' shortcut: a misspelt `timout` sets no deadline and would take it.
    const notObject = Input.notAnObject("options", callOptions)
    if (notObject !== undefined) return Result.fail(notObject)
    const unknown = Input.unknownKey(callOptions, known)
    if (unknown !== undefined) return Result.fail(unknown)
    const flag =
      Input.notABoolean(callOptions, flags) ??
      Input.notOfKind(callOptions, kinds) ??
      labelIssue(callOptions) ??
      (callOptions.provider === undefined
        ? undefined
        : providerSlotIssue(claimSlot, callOptions.provider, "provider.maxConcurrency"))
    if (flag !== undefined) return Result.fail(flag)
    const timeoutInput = callOptions.timeout
    const totalInput = callOptions.totalTimeout
    const given = callOptions.retry
    const retryInput = given === undefined && retryByDefault ? true : given
    if (timeoutInput === undefined && retryInput === undefined && totalInput === undefined) return defaultsResult
    const cached = resolveCache.get(callOptions)
    if (
      cached !== undefined &&
      cached.timeout === timeoutInput &&
      cached.totalTimeout === totalInput &&
      cached.retry === retryInput &&
      sameRetry(cached.retryFields, retryInput)
    ) {
      return cached.resolved
    }
    const resolved = Result.map(
      Input.all([
        Input.optionalDuration("timeout", timeoutInput, defaultTimeout),
        totalInput === undefined ? Result.succeed(undefined) : Input.duration("totalTimeout", totalInput),
        retryInput === undefined || retryInput === false
          ? Result.succeed(undefined)
          : retryInput === true
            ? Result.succeed(basePolicy)
            : decodeRetry(retryInput, "retry")
      ]),
      ([timeout, totalTimeout, retry]): ResolvedOptions => ({ timeout, totalTimeout, retry })
    )
    resolveCache.set(callOptions, {
      timeout: timeoutInput,
      totalTimeout: totalInput,
      retry: retryInput,
      retryFields: retryFieldsOf(retryInput),
      resolved
    })
    return resolved
  }

  const resolve = (callOptions: ExecuteOptions) => {
    const resolved = resolveSync(callOptions)
    return Result.isSuccess(resolved) ? Effect.succeed(resolved.success) : Effect.fail(issueError(resolved.failure))
  }

  return { resolveSync, resolve }
}
