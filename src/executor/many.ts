/**
 * `executeMany`: one outcome per request, in input order. A traced caller gets worker
 * fibers running `execute` (`policy/pool.ts`), so each call has its span; an untraced one
 * starts each call from JavaScript through the engine's `start` (`policy/fused.ts`), with
 * no worker fiber and no Effect per request. Either way a failure is one item's outcome.
 *
 * @internal
 */
import { Cause, Effect, Exit, type Fiber, Result } from "effect"
import { type AiError, invalidRequest, ModelError } from "../AiError.js"
import type { ManyOptions, ResolvedOptions, Service } from "../Executor.js"
import * as Input from "../Input.js"
import type { GenerateRequest, GenerateResponse, RequestLimits, Service as ProviderService } from "../Model.js"
import type { Engine } from "../policy/engine.js"
import type { Sink } from "../policy/fused.js"
import { forEachPool, forEachStarted } from "../policy/pool.js"
import { isTraced } from "../policy/span.js"
import { checkRequest, generateOf } from "./generate.js"
import { manyKeys, type ResolveSync } from "./options.js"
import type { PlanOf } from "./plan.js"
import type { Refuse } from "./refusal.js"

// An item's outcome: its exit as a Result (a defect, which the pipeline does not let
// through, would still be one item's typed error, never the whole batch's).
const resultOf = (exit: Exit.Exit<unknown, AiError>): Result.Result<GenerateResponse, AiError> => {
  if (Exit.isSuccess(exit)) return Result.succeed(exit.value as GenerateResponse)
  const error = Cause.findErrorOption(exit.cause)
  return Result.fail(
    error._tag === "Some"
      ? error.value
      : new ModelError({
          reason: "Unknown",
          message: `the call ended without an answer: ${Cause.pretty(exit.cause)}`
        })
  )
}

// `Array.from` takes any array-like: a request given without its array (`{ prompt }`, no
// `length`) would be no requests at all, and `null` a `TypeError`. Only an iterable is requests.
const itemsOf = (requests: unknown): Array<GenerateRequest> | ModelError => {
  if (Array.isArray(requests)) return Array.from(requests)
  if (
    typeof requests !== "object" ||
    requests === null ||
    typeof (requests as Partial<Iterable<unknown>>)[Symbol.iterator] !== "function"
  ) {
    const kind =
      requests === null ? "null" : typeof requests === "object" ? "an object that is not iterable" : typeof requests
    return invalidRequest("requests", `expected an array (or an iterable) of requests, got ${kind}`)
  }
  try {
    return Array.from(requests as Iterable<GenerateRequest>)
  } catch (error) {
    return invalidRequest("requests", `iterating them threw: ${Input.thrownMessage(error)}`)
  }
}

/**
 * Builds an executor's `executeMany` over its `execute` (for traced callers).
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
  readonly execute: Service["execute"]
}) => {
  const { provider, limits, engine, resolveSync, refuse, planOf, execute } = env

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
      sink.done(index, Exit.fail(refuse(error, target, manyOptions.domain)))
      return undefined
    }
    return engine.start(fiber, planOf(target, request, manyOptions, resolved), generateOf(request), sink, index)
  }

  const executeMany = (requests: Iterable<GenerateRequest>, manyOptions: ManyOptions = {}) =>
    Effect.withFiber((fiber) => {
      // Before any option is read: `null` options are refused, not a `TypeError`.
      const notObject = Input.notAnObject("options", manyOptions)
      if (notObject !== undefined) return Effect.fail(invalidRequest(notObject.path, notObject.message))
      const concurrency = Input.positiveInt("concurrency", Input.orDefault(manyOptions.concurrency, 5))
      if (Result.isFailure(concurrency)) {
        return Effect.fail(invalidRequest(concurrency.failure.path, concurrency.failure.message))
      }
      const resolved = resolveSync(manyOptions, manyKeys)
      if (Result.isFailure(resolved)) {
        return Effect.fail(invalidRequest(resolved.failure.path, resolved.failure.message))
      }
      const items = itemsOf(requests)
      if (items instanceof ModelError) return Effect.fail(items)
      if (isTraced(fiber)) {
        const { concurrency: _, ...itemOptions } = manyOptions
        return Effect.withSpan(
          forEachPool(items, concurrency.success, (request) =>
            Effect.map(Effect.exit(execute(request, itemOptions)), resultOf)
          ),
          "Executor.executeMany",
          { attributes: { "orchestra.items": items.length, "orchestra.concurrency": concurrency.success } }
        )
      }
      // Untraced: no worker fibers, one fiber per call in flight (policy/fused.ts).
      const options = resolved.success
      return Effect.map(
        forEachStarted(items, concurrency.success, (request, sink, index) =>
          startMany(fiber, request, manyOptions, options, sink, index)
        ),
        (exits) => exits.map(resultOf)
      )
    })

  return executeMany
}
