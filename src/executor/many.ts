/**
 * `executeMany`: one outcome per request, in input order. A traced caller gets worker
 * fibers (`policy/pool.ts`) running each call as a traced `execute` would, in its span; an untraced one
 * starts each call from JavaScript through the engine's `start` (`policy/fused.ts`), with
 * no worker fiber and no Effect per request. Either way a failure is one item's outcome.
 *
 * @internal
 */
import { Cause, Effect, Exit, type Fiber, Result } from "effect"
import { type AiError, invalidRequest, ModelError } from "../AiError.js"
import type { ManyOptions, ResolvedOptions } from "../Executor.js"
import * as Input from "../Input.js"
import type { GenerateRequest, GenerateResponse, RequestLimits, Service as ProviderService } from "../Model.js"
import type { Engine } from "../policy/engine.js"
import type { Sink } from "../policy/fused.js"
import { forEachPool, forEachStarted } from "../policy/pool.js"
import { isTraced } from "../policy/span.js"
import { detached, renamed } from "../policy/failure.js"
import { chatTelemetry, checkRequest, executeAttributes, generateOf } from "./generate.js"
import { manyKeys, type ResolveSync, thrownIssue } from "./options.js"
import type { PlanOf } from "./plan.js"
import { issueError, type Refuse } from "./refusal.js"

// An item's outcome: its exit as a Result (a defect, which the pipeline does not let
// through, would still be one item's typed error, never the whole batch's).
const resultOf = (exit: Exit.Exit<unknown, AiError>): Result.Result<GenerateResponse, AiError> => {
  if (Exit.isSuccess(exit)) return Result.succeed(exit.value as GenerateResponse)
  const error = Cause.findErrorOption(exit.cause)
  return Result.fail(
    detached(
      error._tag === "Some"
        ? error.value
        : new ModelError({
            reason: "Unknown",
            message: `the call ended without an answer: ${Cause.pretty(exit.cause)}`
          })
    )
  )
}

/**
 * The most requests one `executeMany` takes unless its `maxRequests` option says otherwise: a
 * longer batch (a sparse `new Array(2 ** 32 - 1)`, an endless iterable) is refused naming
 * `requests`, before any is read.
 *
 * @internal
 */
export const maxRequests = 1_000_000

const tooMany = (max: number, got: string): ModelError =>
  invalidRequest("requests", `expected at most ${max} requests (maxRequests), got ${got}`)

// `Array.from` takes any array-like: a request given without its array (`{ prompt }`, no
// `length`) would be no requests at all, and `null` a `TypeError`. Only an iterable is requests.
const itemsOf = (requests: unknown, max: number): Array<GenerateRequest> | ModelError => {
  if (Array.isArray(requests)) return arrayOf(requests, max)
  if (
    typeof requests !== "object" ||
    requests === null ||
    typeof (requests as Partial<Iterable<unknown>>)[Symbol.iterator] !== "function"
  ) {
    const kind =
      typeof requests === "object" && requests !== null ? "an object that is not iterable" : Input.kindOf(requests)
    return invalidRequest("requests", `expected an array (or an iterable) of requests, got ${kind}`)
  }
  const items: Array<GenerateRequest> = []
  try {
    for (const request of requests as Iterable<GenerateRequest>) {
      if (items.length === max) return tooMany(max, "more")
      items.push(request)
    }
  } catch (error) {
    return invalidRequest("requests", `iterating them threw: ${Input.thrownMessage(error)}`)
  }
  return items
}

// An array's length is read first (a `Proxy` may claim any), then its elements by index:
// a hole is `undefined`, that request's own refusal.
const arrayOf = (requests: ReadonlyArray<unknown>, max: number): Array<GenerateRequest> | ModelError => {
  let length: number
  try {
    length = requests.length
  } catch (error) {
    return invalidRequest("requests", `reading its length threw: ${Input.thrownMessage(error)}`)
  }
  if (!Number.isSafeInteger(length) || length < 0) {
    return invalidRequest(
      "requests",
      `expected an array, got a length of ${typeof length === "number" ? length : typeof length}`
    )
  }
  if (length > max) return tooMany(max, String(length))
  const items = new Array<GenerateRequest>(length)
  for (let index = 0; index < length; index++) {
    try {
      items[index] = requests[index] as GenerateRequest
    } catch (error) {
      return invalidRequest(`requests[${index}]`, `reading it threw: ${Input.thrownMessage(error)}`)
    }
  }
  return items
}

// A request's refusal names its place in the batch (`requests[3].prompt`), as `Batch.run`
// names its items: "prompt" alone does not tell which of 10,000 requests it was.
const atIndex = (error: ModelError, index: number): ModelError => {
  const field = error.field
  const item = `requests[${index}]`
  return renamed(error, field === undefined || field === "request" || field === "(root)" ? item : `${item}.${field}`)
}

/**
 * Builds an executor's `executeMany`. Each request is checked once, where it is taken: its
 * refusal names its place (`requests[3].prompt`), traced or not (`execute` would check each
 * request again).
 *
 * @internal
 */
export const make = (env: {
  readonly provider: ProviderService
  readonly limits: RequestLimits
  readonly engine: Engine
  readonly resolveSync: ResolveSync
  readonly refuse: Refuse
  readonly planOf: PlanOf
}) => {
  const { provider, limits, engine, resolveSync, refuse, planOf } = env

  // The plan of a request checked already, or its refusal when reading it throws later (the plan
  // estimates its tokens): that request's own error, not an exception that ends every request.
  const planOrRefusal = (
    target: ProviderService,
    request: GenerateRequest,
    manyOptions: ManyOptions,
    resolved: ResolvedOptions,
    index: number
  ): ReturnType<PlanOf> | ModelError => {
    try {
      return planOf(target, request, manyOptions, resolved)
    } catch (defect) {
      const unreadable = invalidRequest(`requests[${index}]`, `reading it threw: ${Input.thrownMessage(defect)}`)
      return refuse(unreadable, target, manyOptions.domain)
    }
  }

  // One request of a traced `executeMany`, on a worker fiber: what `execute` does for a traced
  // caller (its span, the attempts' telemetry), with the request checked once, by the pool.
  const executeTraced = (
    request: GenerateRequest,
    manyOptions: ManyOptions,
    resolved: ResolvedOptions,
    index: number
  ): Effect.Effect<Result.Result<GenerateResponse, AiError>> => {
    const target = manyOptions.provider ?? provider
    const error = checkRequest(request, limits)
    if (error !== undefined)
      return Effect.succeed(Result.fail(detached(refuse(atIndex(error, index), target, manyOptions.domain))))
    const plan = planOrRefusal(target, request, manyOptions, resolved, index)
    if (plan instanceof ModelError) return Effect.succeed(Result.fail(detached(plan)))
    return Effect.withFiber((fiber) =>
      Effect.exit(
        Effect.withSpan(
          engine.runValueIn(fiber, { ...plan, telemetry: chatTelemetry(request) }, generateOf(request)),
          "Executor.execute",
          { attributes: executeAttributes(target, request, manyOptions.domain) }
        )
      ).pipe(Effect.map(resultOf))
    )
  }

  // One request of `executeMany`, started from JavaScript on the pool's fiber (untraced).
  const startMany = (
    fiber: Fiber.Fiber<unknown, unknown>,
    request: GenerateRequest,
    manyOptions: ManyOptions,
    resolved: ResolvedOptions,
    sink: Sink,
    index: number
  ) => {
    const target = manyOptions.provider ?? provider
    const error = checkRequest(request, limits)
    if (error !== undefined) {
      sink.done(index, Exit.fail(refuse(atIndex(error, index), target, manyOptions.domain)))
      return undefined
    }
    const plan = planOrRefusal(target, request, manyOptions, resolved, index)
    if (plan instanceof ModelError) {
      sink.done(index, Exit.fail(plan))
      return undefined
    }
    return engine.start(fiber, plan, generateOf(request), sink, index)
  }

  // The options of one call, checked once: a getter (or `Proxy` trap) that throws is an
  // InvalidRequest naming the option, not a defect ending the call. A refusal is counted as
  // `execute`'s are: options that threw when read are not read again to find its provider and domain.
  const checkOptions = (
    manyOptions: ManyOptions
  ): { readonly concurrency: number; readonly max: number; readonly options: ResolvedOptions } | ModelError => {
    try {
      // Before any option is read: `null` options are refused, not a `TypeError`.
      const notObject = Input.notAnObject("options", manyOptions)
      if (notObject !== undefined) return refuse(invalidRequest(notObject.path, notObject.message), provider, undefined)
      const concurrency = Input.positiveInt("concurrency", Input.orDefault(manyOptions.concurrency, 5))
      if (Result.isFailure(concurrency)) return refuseOptions(concurrency.failure, manyOptions)
      const max = Input.positiveInt("maxRequests", Input.orDefault(manyOptions.maxRequests, maxRequests))
      if (Result.isFailure(max)) return refuseOptions(max.failure, manyOptions)
      const resolved = resolveSync(manyOptions, manyKeys)
      if (Result.isFailure(resolved)) {
        return resolved.failure.cause === undefined
          ? refuseOptions(resolved.failure, manyOptions)
          : refuse(issueError(resolved.failure), provider, undefined)
      }
      return { concurrency: concurrency.success, max: max.success, options: resolved.success }
    } catch (thrown) {
      const issue = thrownIssue(manyOptions, thrown)
      return refuse(issueError(issue), provider, undefined)
    }
  }

  const refuseOptions = (issue: Input.Issue, manyOptions: ManyOptions): ModelError =>
    refuse(invalidRequest(issue.path, issue.message), manyOptions.provider ?? provider, manyOptions.domain)

  const executeMany = (requests: Iterable<GenerateRequest>, manyOptions: ManyOptions = {}) =>
    Effect.withFiber((fiber) => {
      const checked = checkOptions(manyOptions)
      if (checked instanceof ModelError) return Effect.fail(checked)
      const { concurrency, max, options } = checked
      const items = itemsOf(requests, max)
      if (items instanceof ModelError) {
        return Effect.fail(refuse(items, manyOptions.provider ?? provider, manyOptions.domain))
      }
      if (isTraced(fiber)) {
        return Effect.withSpan(
          forEachPool(items, concurrency, (request, index) => executeTraced(request, manyOptions, options, index)),
          "Executor.executeMany",
          { attributes: { "orchestra.items": items.length, "orchestra.concurrency": concurrency } }
        )
      }
      // Untraced: no worker fibers, one fiber per call in flight (policy/fused.ts).
      return Effect.map(
        forEachStarted(items, concurrency, (request, sink, index) =>
          startMany(fiber, request, manyOptions, options, sink, index)
        ),
        (exits) => exits.map(resultOf)
      )
    })

  return executeMany
}
