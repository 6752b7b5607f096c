/**
 * What a stream runs and how it is asked for: the `StreamPlan` (its steps, deadlines,
 * resumption, cache and retry hook) and the `StreamOptions` of `Executor.stream`, every
 * value checked and turned into a plan by `streamFromOptions`. Plans run in `stream.ts`.
 *
 * @internal
 */
import { type Duration, Effect, type Option, Result, Stream } from "effect"
import { type AiError, invalidRequest, isAiError, ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import type { GenerateRequest, Service as ProviderService, StreamPart } from "../Model.js"
import { decodeRetry, type RetryPolicy, type RetryPolicyInput } from "../Policy.js"
import { keyedRequest } from "../ResponseCache/key.js"
import { labelIssue } from "../stats/labels.js"
import { retryHookOf } from "./callback.js"
import { cacheKeyOf } from "./failure.js"
import type { RetryEvent, Step } from "./plan.js"
import { defaultInstruction, type ResumeOptions } from "./stream-resume.js"

/**
 * Completed streams, replayed on a hit.
 *
 * @internal
 */
export interface StreamCache {
  readonly getParts: (key: string) => Effect.Effect<Option.Option<ReadonlyArray<StreamPart>>, ModelError>
  readonly setParts: (key: string, parts: ReadonlyArray<StreamPart>) => Effect.Effect<void, ModelError>
}

/**
 * One step of a stream: a provider and its policies, and how the request is adapted to it.
 *
 * @internal
 */
export interface StreamStep extends Step<ProviderService> {
  readonly prepare?: ((request: GenerateRequest) => GenerateRequest) | undefined
}

/**
 * @internal
 */
export interface StreamPlan {
  readonly steps: readonly [StreamStep, ...Array<StreamStep>]
  readonly firstChunkTimeout: Duration.Duration | undefined
  readonly idleTimeout: Duration.Duration | undefined
  readonly totalTimeout: Duration.Duration | undefined
  readonly resume?:
    | { readonly maxResumes: number; readonly instruction: string; readonly minOverlap: number }
    | undefined
  readonly cache?: { readonly store: StreamCache; readonly key: string } | undefined
  /** The request's issue, if any: a resumed stream's continuation the limits refuse is not sent. */
  readonly validate?: ((request: GenerateRequest) => ModelError | undefined) | undefined
  readonly onRetry?: ((event: RetryEvent<ProviderService>) => Effect.Effect<void>) | undefined
}

/**
 * What a step's `prepare` threw, as the attempt ends with it: the `ModelError` naming a caller's
 * `prepare` (its step's wrapper throws it), else the provider's `Unknown` failure.
 *
 * @internal
 */
export const prepareRefusal = (step: StreamStep, thrown: unknown): AiError =>
  isAiError(thrown)
    ? thrown
    : new ModelError({
        reason: "Unknown",
        provider: step.name,
        message: `preparing the request failed: ${Input.thrownMessage(thrown)}`,
        cause: thrown
      })

// The steps' `prepare`s the library makes itself (a router's domain), whose answers are not checked
// again: a router's calls send theirs unchecked too, and a check is not free on the gateway's path.
const ownPrepares = new WeakSet<object>()

/**
 * A `prepare` of the library's own (a domain's `applyTo`): its answer is sent as it is.
 *
 * @internal
 */
export const ownPrepare = <F extends (request: GenerateRequest) => GenerateRequest>(prepare: F): F => {
  ownPrepares.add(prepare)
  return prepare
}

/**
 * Options of `Executor.stream`; every value is checked (an `InvalidRequest` naming it).
 *
 * @internal
 */
export interface StreamOptions {
  /** One provider. Default: the executor's. */
  readonly provider?: ProviderService | undefined
  /** Providers in fallback order; takes precedence over `provider`. */
  readonly steps?:
    | ReadonlyArray<{
        readonly provider: ProviderService
        readonly domain?: string | undefined
        readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
        /** The model this step asks for, in place of the request's. */
        readonly model?: string | undefined
        /**
         * Adapts the request for this step's provider (after `model`), a resumed step's continuation
         * included: called once per request it adapts, its answer (or throw) reused by the step's
         * retries, the stream's span and cache key. Its answer is checked as the request is (limits
         * included): one refused, or a throw, ends the attempt with an `InvalidRequest` naming
         * `steps[i].prepare`.
         */
        readonly prepare?: ((request: GenerateRequest) => GenerateRequest) | undefined
        /** This step's first-chunk deadline, instead of the stream's `firstChunkTimeout`. */
        readonly firstChunkTimeout?: Duration.Input | undefined
        /** `false`: a stream this step served is not kept in the cache (default: kept). */
        readonly cache?: boolean | undefined
      }>
    | undefined
  /** Domain dimension of the metrics. */
  readonly domain?: string | undefined
  /** Retries before the first chunk: `true` (the executor's policy), a policy, or `false` (default). */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /** Deadline for the first chunk of each attempt. Default 30 s. */
  readonly firstChunkTimeout?: Duration.Input | "none" | undefined
  /** Longest wait for the next chunk while the upstream is being read (a slow consumer does not count). Default 30 s. */
  readonly idleTimeout?: Duration.Input | "none" | undefined
  /**
   * Deadline of the whole stream, retries, fallbacks and consumer time included, until the provider's whole answer
   * is read ahead (then delivered whole). Default 10 minutes.
   */
  readonly totalTimeout?: Duration.Input | "none" | undefined
  /**
   * Continue on the next step after a mid-stream failure (lossy; never past a delivered tool call, nor
   * with a continuation the request limits refuse: the stream then ends with its partial text). Default off.
   */
  readonly resume?: boolean | ResumeOptions | undefined
  /** Replay completed streams from the executor's cache (default true when it has one). */
  readonly cache?: boolean | undefined
  readonly onRetry?:
    | ((info: {
        readonly provider: string
        readonly domain?: string | undefined
        readonly attempt: number
        readonly error: AiError
        readonly delay: Duration.Duration
      }) => Effect.Effect<void>)
    | undefined
}

/**
 * The `StreamOptions` of a call with what the executor adds: its provider, its check of the
 * request, how it counts a refused stream, its steps, its retry policy and its cache.
 *
 * @internal
 */
export type ExecutorStreamOptions = StreamOptions & {
  readonly provider: ProviderService
  /** The request's issue, if any. */
  readonly validate: (request: GenerateRequest) => ModelError | undefined
  /**
   * A stream refused for its options or its request, counted as the executor counts a refused call
   * (on the executor's provider for options that threw when read: they are not read again).
   */
  readonly refuse: (error: ModelError, options: ExecutorStreamOptions | undefined) => ModelError
  /** A step on the provider for the request (its token estimate, for the rate limits). */
  readonly stepFor: (
    provider: ProviderService,
    domain: string | undefined,
    request: GenerateRequest
  ) => Step<ProviderService>
  readonly basePolicy: RetryPolicy
  readonly cacheStore?:
    | (Partial<StreamCache> & {
        readonly key: (input: { readonly provider: string; readonly request: GenerateRequest }) => string
      })
    | undefined
}

/**
 * The executor's deadlines for the options that leave them out.
 *
 * @internal
 */
export interface StreamDefaults {
  readonly firstChunkTimeout: Duration.Duration | undefined
  readonly idleTimeout: Duration.Duration | undefined
  readonly totalTimeout: Duration.Duration | undefined
}

const stepKeys: ReadonlySet<string> = new Set([
  "provider",
  "domain",
  "retry",
  "model",
  "prepare",
  "firstChunkTimeout",
  "cache"
])

const stepKinds = [
  ["provider", "object"],
  ["domain", "string"],
  ["model", "string"],
  ["prepare", "function"]
] as const

// A misspelt key (`provder`) would run the executor's own provider unseen.
const stepsIssue = (steps: unknown): Input.Issue | undefined => {
  if (steps === undefined) return undefined
  if (!Array.isArray(steps)) return { path: "steps", message: "expected an array of steps" }
  for (const [i, step] of steps.entries()) {
    const issue = Input.notAnObject(`steps[${i}]`, step) ?? Input.unknownKey(step as object, stepKeys, `steps[${i}].`)
    if (issue !== undefined) return issue
    // A step's provider and domain label its series, as a call's do.
    const label =
      Input.notOfKind(step as object, stepKinds) ?? labelIssue(step as object) ?? Input.notABoolean(step, ["cache"])
    if (label !== undefined) return { path: `steps[${i}].${label.path}`, message: label.message }
    // Checked as a request's model is: a step's replaces it after the request's checks, and was sent as it was.
    const model = (step as { readonly model?: unknown }).model
    if (typeof model === "string" && (model.length === 0 || model.trim() !== model)) {
      return {
        path: `steps[${i}].model`,
        message: `expected a model id (not empty, no leading or trailing spaces), got ${Input.shown(model)}`
      }
    }
  }
  return undefined
}

const resolveRetry = (input: boolean | RetryPolicy | RetryPolicyInput | undefined, base: RetryPolicy, path: string) =>
  input === undefined || input === false
    ? Result.succeed(undefined)
    : input === true
      ? Result.succeed(base)
      : decodeRetry(input, path)

const resumeKeys: ReadonlySet<string> = new Set(["maxResumes", "instruction", "minOverlap"])

/**
 * A stream's `resume` checked: `true`, `false` or its options; `null`, `"yes"` or `1` are
 * mistakes, not "on". The issue's path starts with `resume`.
 *
 * @internal
 */
export const resumeOf = (
  resume: unknown
): Input.Checked<{ maxResumes: number; minOverlap: number; instruction: string } | undefined> => {
  if (resume === undefined || resume === false) return Result.succeed(undefined)
  if (resume === true) return Result.succeed({ maxResumes: 1, minOverlap: 4, instruction: defaultInstruction })
  if (typeof resume !== "object" || resume === null || Array.isArray(resume)) {
    return Result.fail({ path: "resume", message: `expected true, false or an object, got ${Input.shown(resume)}` })
  }
  const options = resume as ResumeOptions
  const issue =
    Input.unknownKey(options, resumeKeys, "resume.") ?? Input.notOfKind(options, [["instruction", "string"]])
  if (issue !== undefined) {
    return Result.fail(issue.path === "instruction" ? { ...issue, path: "resume.instruction" } : issue)
  }
  return Result.map(
    Input.all([
      Input.int("resume.maxResumes", Input.orDefault(options.maxResumes, 1), { min: 1 }),
      Input.int("resume.minOverlap", Input.orDefault(options.minOverlap, 4), { min: 1 })
    ]),
    ([maxResumes, minOverlap]) => ({ maxResumes, minOverlap, instruction: options.instruction ?? defaultInstruction })
  )
}

/**
 * `Executor.stream` over `run`: the request validated, the options checked and turned into
 * a plan (failing with an `InvalidRequest` naming the value), then the plan run.
 *
 * @internal
 */
export const streamFromOptions =
  (defaults: StreamDefaults, run: (plan: StreamPlan, request: GenerateRequest) => Stream.Stream<StreamPart, AiError>) =>
  (request: GenerateRequest, options: ExecutorStreamOptions): Stream.Stream<StreamPart, AiError> =>
    Stream.unwrap(planned(defaults, run, request, options))

// What a nested option's getter (or \`Proxy\` trap) that threw names: \`resume.maxResumes\`,
// \`steps[0].model\`; \`undefined\` when none throws again (a defect of the executor's, not the caller's).
const thrownNested = (options: StreamOptions): Input.Issue | undefined => {
  const resume = options.resume
  if (typeof resume === "object" && resume !== null) {
    const read = Input.readFields(resume, undefined, "resume")
    if (Result.isFailure(read)) return read.failure
  }
  const steps = options.steps
  if (!Array.isArray(steps)) return undefined
  for (const [i, step] of steps.entries()) {
    if (typeof step !== "object" || step === null) continue
    const read = Input.readFields(step, undefined, `steps[${i}]`)
    if (Result.isFailure(read)) return read.failure
  }
  return undefined
}

const refusedThrown = (options: ExecutorStreamOptions, thrown: unknown) => {
  const issue = thrownNested(options)
  if (issue === undefined) throw thrown
  return Effect.fail(options.refuse(Input.toInvalidRequest(issue), undefined))
}

// A step's `prepare` called once per request it adapts: the stream's span, its cache key and the
// step's attempts (its retries) ask it for the same request, and a caller's may cost or count.
const once = (prepare: (request: GenerateRequest) => GenerateRequest) => {
  let given: GenerateRequest | undefined
  let answer: GenerateRequest | undefined
  let thrown: unknown
  let threw = false
  return (request: GenerateRequest): GenerateRequest => {
    if (request !== given) {
      given = request
      threw = false
      try {
        answer = prepare(request)
      } catch (cause) {
        threw = true
        thrown = cause
      }
    }
    if (threw) throw thrown
    return answer!
  }
}

// Step `i`'s request: with its `model`, adapted by its `prepare`, once per request (`once`). What
// a caller's `prepare` throws or answers is the attempt's refusal naming it (`prepareRefusal`), its
// answer checked as the request was, its limits included: no provider sees what the executor refuses.
const checkedPrepare = (
  i: number,
  model: string | undefined,
  prepare: ((request: GenerateRequest) => GenerateRequest) | undefined,
  validate: (request: GenerateRequest) => ModelError | undefined
) => {
  const own = prepare !== undefined && ownPrepares.has(prepare)
  return once((r: GenerateRequest) => {
    const withModel = model === undefined ? r : { ...r, model }
    if (prepare === undefined) return withModel
    let prepared: GenerateRequest
    try {
      prepared = prepare(withModel)
    } catch (cause) {
      throw invalidRequest(`steps[${i}].prepare`, `the prepare option threw: ${Input.thrownMessage(cause)}`)
    }
    if (own) return prepared
    const invalid = validate(prepared)
    if (invalid !== undefined) {
      throw invalidRequest(`steps[${i}].prepare`, `its answer was refused: ${invalid.message}`)
    }
    return prepared
  })
}

/**
 * A stream plan built in code (`Executor.runStream`) with its steps' `prepare`s checked as
 * `Executor.stream`'s are, by `validate` (and its own `validate` defaulting to it). The plan itself
 * when it has no `prepare` of a caller's and a `validate`: a copy only when one is needed.
 *
 * @internal
 */
export const checkedStreamPlan = (
  plan: StreamPlan,
  validate: (request: GenerateRequest) => ModelError | undefined
): StreamPlan => {
  let steps: Array<StreamStep> | undefined
  for (let i = 0; i < plan.steps.length; i++) {
    const step = plan.steps[i]!
    const prepare = step.prepare
    if (prepare === undefined || ownPrepares.has(prepare)) continue
    steps ??= plan.steps.slice()
    steps[i] = { ...step, prepare: checkedPrepare(i, undefined, prepare, validate) }
  }
  if (steps === undefined && plan.validate !== undefined) return plan
  return {
    ...plan,
    steps: (steps ?? plan.steps) as unknown as StreamPlan["steps"],
    validate: plan.validate ?? validate
  }
}

// Made once, not per stream: V8 gives a generator function made per call a map of its own, in
// the old generation, which keeps what its closure reaches alive until the next full collection.
const planned = Effect.fnUntraced(function* (
  defaults: StreamDefaults,
  run: (plan: StreamPlan, request: GenerateRequest) => Stream.Stream<StreamPart, AiError>,
  request: GenerateRequest,
  options: ExecutorStreamOptions
) {
  // The options before the request (a step's own retry and deadline after it), as a call's: either
  // refusal is counted as the call's would be.
  // A nested field's getter that throws (the options' own ones were read by the executor's copy).
  let checks: Input.Checked<
    readonly [
      Duration.Duration | undefined,
      Duration.Duration | undefined,
      Duration.Duration | undefined,
      RetryPolicy | undefined,
      { maxResumes: number; minOverlap: number; instruction: string } | undefined
    ]
  >
  let issue: Input.Issue | undefined
  try {
    checks = Input.all([
      Input.optionalDuration("firstChunkTimeout", options.firstChunkTimeout, defaults.firstChunkTimeout),
      Input.optionalDuration("idleTimeout", options.idleTimeout, defaults.idleTimeout),
      Input.optionalDuration("totalTimeout", options.totalTimeout, defaults.totalTimeout),
      resolveRetry(options.retry, options.basePolicy, "retry"),
      resumeOf(options.resume)
    ])
    issue =
      stepsIssue(options.steps) ??
      (options.steps?.length === 0 ? { path: "steps", message: "give at least one step" } : undefined)
  } catch (thrown) {
    return yield* refusedThrown(options, thrown)
  }
  if (Result.isFailure(checks))
    return yield* Effect.fail(options.refuse(Input.toInvalidRequest(checks.failure), options))
  const [firstChunkTimeout, idleTimeout, totalTimeout, retry, resume] = checks.success
  if (issue !== undefined) return yield* Effect.fail(options.refuse(invalidRequest(issue.path, issue.message), options))
  // Before the steps are made: a step's limits read the request.
  const invalid = options.validate(request)
  if (invalid !== undefined) return yield* Effect.fail(options.refuse(invalid, options))
  const valid = request
  const inputs = options.steps ?? [{ provider: options.provider }]
  const steps: Array<StreamStep> = []
  try {
    for (const [i, input] of inputs.entries()) {
      const stepRetry =
        input.retry === undefined
          ? Result.succeed(retry)
          : resolveRetry(input.retry as never, options.basePolicy, `steps[${i}].retry`)
      if (Result.isFailure(stepRetry)) {
        return yield* Effect.fail(options.refuse(Input.toInvalidRequest(stepRetry.failure), options))
      }
      const checked = stepRetry.success
      let firstChunk: Duration.Duration | undefined
      if (input.firstChunkTimeout !== undefined) {
        const duration = Input.duration(`steps[${i}].firstChunkTimeout`, input.firstChunkTimeout)
        if (Result.isFailure(duration)) {
          return yield* Effect.fail(options.refuse(Input.toInvalidRequest(duration.failure), options))
        }
        firstChunk = duration.success
      }
      const base = options.stepFor(input.provider ?? options.provider, input.domain ?? options.domain, valid)
      const model = input.model
      const prepare = input.prepare
      steps.push({
        ...base,
        // A stream step's `timeout` is its first-chunk deadline (`undefined`: the stream's).
        timeout: firstChunk,
        cacheable: input.cache !== false,
        retry: checked,
        prepare:
          model === undefined && prepare === undefined ? undefined : checkedPrepare(i, model, prepare, options.validate)
      })
    }
  } catch (thrown) {
    return yield* refusedThrown(options, thrown)
  }
  const cache = options.cache === false ? undefined : options.cacheStore
  // A first step whose `prepare` throws has no key: its attempt ends with the refusal, counted as any.
  let keyed: GenerateRequest | undefined
  try {
    keyed = cache === undefined ? undefined : (steps[0]!.prepare?.(valid) ?? valid)
  } catch {
    keyed = undefined
  }
  const plan: StreamPlan = {
    steps: steps as unknown as StreamPlan["steps"],
    firstChunkTimeout,
    idleTimeout,
    totalTimeout,
    resume,
    validate: options.validate,
    cache:
      cache === undefined || cache.getParts === undefined || cache.setParts === undefined || keyed === undefined
        ? undefined
        : {
            // The cache itself, its methods called on it: taken off it, a class's `getParts` reading `this` failed.
            store: cache as StreamCache,
            // Keyed on what the first step sends (a domain's system prompt and model included).
            key: cacheKeyOf(
              cache,
              { provider: steps[0]!.name, request: keyedRequest(keyed, steps[0]!.target.defaultModel) },
              steps[0]!.name
            )
          },
    onRetry: options.onRetry === undefined ? undefined : retryHookOf(options.onRetry)
  }
  return run(plan, valid)
})
