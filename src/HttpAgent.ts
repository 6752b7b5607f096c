/**
 * Agents over HTTP: a task is POSTed to an agent's URL as `{ task_id, intent, concept, args }`
 * and the answer is decoded with a `Schema`. Every call ends in a status record (`success`,
 * `error`, `timeout`, `service_unavailable`, or `skipped` in a batch), never in a failure.
 * Connection limits are shared by all agents, each agent URL has its own circuit breaker,
 * and batches of tasks with dependencies run on the `Pipeline` engine.
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { Clock, Context, Duration, Effect, Either, Layer, Metric, Ref, Schema } from "effect"
import { type CircuitOpenError, ModelError, TimeoutError } from "./AiError.js"
import * as CircuitBreaker from "./CircuitBreaker.js"
import * as Http from "./internal/http.js"
import * as Connections from "./internal/pipelineConnections.js"
import * as Pipeline from "./Pipeline.js"

/**
 * The body POSTed to an agent. `dependencies` holds the results of the tasks this one
 * depends on (batches only).
 *
 * @since 0.1.0
 * @category schemas
 */
export const TaskBody = Schema.Struct({
  task_id: Schema.String,
  intent: Schema.String,
  concept: Schema.String,
  args: Schema.Unknown,
  dependencies: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.Unknown }))
})

/**
 * @since 0.1.0
 * @category models
 */
export type TaskBody = typeof TaskBody.Type

/**
 * Any JSON value. Unlike `Schema.Unknown`, a missing property fails ("is missing").
 *
 * @since 0.1.0
 * @category schemas
 */
export const JsonValue = Schema.Union(
  Schema.Null,
  Schema.String,
  Schema.Number,
  Schema.Boolean,
  Schema.Array(Schema.Unknown),
  Schema.Record({ key: Schema.String, value: Schema.Unknown })
)

/**
 * The default answer of an agent. `result` is required (it may be `null`); `task_id` must
 * be the task's own id.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Answer = Schema.Struct({
  task_id: Schema.String,
  status: Schema.optional(Schema.String),
  result: JsonValue
})

/**
 * @since 0.1.0
 * @category models
 */
export type Answer = typeof Answer.Type

/**
 * A remote agent: where it lives and how its answers decode into a task result.
 *
 * @since 0.1.0
 * @category models
 */
export interface Agent<A = unknown> {
  readonly name: string
  readonly url: string
  /** Per-request timeout for this agent (the service default otherwise). */
  readonly timeout?: Duration.Duration | undefined
  /** The task's result from the answer text, or a `Decode` error naming the field. */
  readonly decode: (text: string, taskId: string) => Effect.Effect<A, ModelError>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AgentOptions {
  readonly url: string
  /** Name in records and metrics (default: the URL). */
  readonly name?: string | undefined
  readonly timeout?: Duration.DurationInput | undefined
}

const decodeAnswer = Http.jsonDecoder(Answer)

/**
 * Describes an agent. Without `answer`, answers are decoded with `Answer` and the record's
 * result is the answer's `result`; with `answer`, the whole decoded answer is the result.
 * An answer whose `status` is `"error"` or `"failed"` makes an `error` record.
 *
 * @since 0.1.0
 * @category constructors
 */
export const agent: {
  (options: AgentOptions): Agent<unknown>
  <A, I>(options: AgentOptions & { readonly answer: Schema.Schema<A, I> }): Agent<A>
} = (options: AgentOptions & { readonly answer?: Schema.Schema<unknown, unknown> }): Agent<unknown> => {
  const name = options.name ?? options.url
  const ctx: Http.CallContext = { provider: name }
  const timeout = options.timeout === undefined ? undefined : Duration.decode(options.timeout)
  if (options.answer !== undefined) {
    const decodeCustom = Http.jsonDecoder(options.answer)
    return { name, url: options.url, timeout, decode: (text) => decodeCustom(text, ctx) }
  }
  return {
    name,
    url: options.url,
    timeout,
    decode: (text, taskId) =>
      Effect.flatMap(decodeAnswer(text, ctx), (answer) => {
        if (answer.task_id !== taskId) {
          return Effect.fail(
            new ModelError({
              reason: "Decode",
              message: `${name} answered for task "${answer.task_id}" instead of "${taskId}"`,
              provider: name,
              field: "task_id"
            })
          )
        }
        if (answer.status === "error" || answer.status === "failed") {
          const detail = typeof answer.result === "string" ? `: ${answer.result}` : ""
          return Effect.fail(
            new ModelError({
              reason: "Unknown",
              message: `${name} reported status "${answer.status}"${detail}`,
              provider: name
            })
          )
        }
        return Effect.succeed(answer.result)
      })
  }
}

/**
 * A task for an agent. `dependsOn` (task ids) matters only in a batch.
 *
 * @since 0.1.0
 * @category models
 */
export interface Task<A = unknown> {
  readonly id: string
  /** An agent, or just its URL (default answer schema). */
  readonly agent: Agent<A> | string
  readonly intent: string
  readonly concept: string
  /** Any JSON value. */
  readonly args?: unknown
  readonly dependsOn?: ReadonlyArray<string> | undefined
  /** Per-request timeout; wins over the agent's and the service's. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Key of the last good result kept for `service_unavailable` (default: url + intent + concept + args). */
  readonly cacheKey?: string | undefined
}

/**
 * The outcome of one task.
 *
 * - `success`: the agent answered 2xx and the answer decoded.
 * - `error`: an HTTP status outside 2xx (`httpStatus`), a connection failure, an answer that
 *   did not decode (`reason: "Decode"`, `field` names it) or that reported an error.
 * - `timeout`: no answer within the request timeout.
 * - `service_unavailable`: the agent's circuit breaker is open; with the cache on, `result`
 *   is the last good result for the task's key and `fromCache` is `true`.
 * - `skipped` (batches): a dependency did not succeed; `error.dependency` names it.
 *
 * @since 0.1.0
 * @category models
 */
export interface TaskRecord<A = unknown> {
  readonly taskId: string
  readonly agent: string
  readonly url: string
  readonly status: "success" | "error" | "timeout" | "service_unavailable" | "skipped"
  readonly result?: A | undefined
  readonly error?:
    | {
        readonly message: string
        readonly reason: string
        readonly httpStatus?: number | undefined
        readonly field?: string | undefined
        readonly dependency?: string | undefined
      }
    | undefined
  /** Clock millis when the task was sent (or skipped). */
  readonly startedAt: number
  /** Queueing for a connection included. */
  readonly durationMs: number
  readonly fromCache?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Requests in flight across all agents. Default 100. */
  readonly maxConnections?: number | undefined
  /** Requests in flight to one host (`host:port`). Default 10. */
  readonly maxConnectionsPerHost?: number | undefined
  /** Default per-request timeout. Default 30 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Options of the per-URL breakers (the registry's defaults otherwise). */
  readonly breaker?: CircuitBreaker.MakeOptions | undefined
  /** Keep the last good result per task key for `service_unavailable` answers. Default off. */
  readonly cache?: boolean | { readonly capacity: number } | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface DispatchOptions {
  /**
   * Tasks running at once (default: no limit beyond the connection limits). A whole
   * number of at least 1 (or `Infinity`); anything else fails the batch with a
   * `PipelineError` of reason `InvalidOption`.
   */
  readonly concurrency?: number | undefined
}

/**
 * Connection-limit figures, for tests and dashboards.
 *
 * @since 0.1.0
 * @category models
 */
export type ConnectionStats = Connections.ConnectionStats

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Sends one task. Never fails. */
  readonly call: <A = unknown>(task: Task<A>) => Effect.Effect<TaskRecord<A>>
  /**
   * Sends a batch: independent tasks concurrently, each dependent task after its
   * dependencies succeeded (with their results in `dependencies`). One record per task, in
   * input order. Fails only when the batch itself is invalid (duplicate ids, unknown
   * dependencies, cycles) or `concurrency` is not a whole number of at least 1.
   */
  readonly dispatch: (
    tasks: ReadonlyArray<Task>,
    options?: DispatchOptions
  ) => Effect.Effect<ReadonlyArray<TaskRecord>, Pipeline.PipelineError>
  readonly connections: Effect.Effect<ConnectionStats>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class HttpAgents extends Context.Tag("effect-orchestra/HttpAgent")<HttpAgents, Service>() {}

/**
 * Task records by status and agent. Defined here until `Metrics.ts` takes it.
 *
 * @since 0.1.0
 * @category metrics
 */
export const taskRecords = Metric.counter("orchestra_agent_tasks_total", {
  description: "HTTP agent task records, tagged by status and agent",
  incremental: true
})

const hostOf = (url: string): Either.Either<string, ModelError> => {
  try {
    return Either.right(new URL(url).host)
  } catch {
    return Either.left(new ModelError({ reason: "InvalidRequest", message: `invalid agent URL: ${url}`, field: "url" }))
  }
}

const argsNotJson = (task: Task<unknown>, agentName: string): ModelError =>
  new ModelError({
    reason: "InvalidRequest",
    message: `task "${task.id}": args are not JSON`,
    provider: agentName,
    field: "args"
  })

/** The cache key; args that are not JSON (a BigInt, a cycle) cannot make one. */
const keyOf = (task: Task<unknown>, target: Agent<unknown>): Either.Either<string, ModelError> =>
  task.cacheKey !== undefined
    ? Either.right(task.cacheKey)
    : Either.try({
        try: () => JSON.stringify([target.url, task.intent, task.concept, task.args ?? null]),
        catch: () => argsNotJson(task, target.name)
      })

const countRecord = (record: TaskRecord<unknown>): Effect.Effect<void> =>
  Metric.update(taskRecords.pipe(Metric.tagged("status", record.status), Metric.tagged("agent", record.agent)), 1)

const usable = (record: TaskRecord<unknown>): boolean =>
  record.status === "success" || (record.status === "service_unavailable" && record.fromCache === true)

/**
 * Builds the service: one connection limiter and one cache for all agents; breakers come
 * from the shared `CircuitBreaker.Registry`, keyed by agent URL.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const client = yield* HttpClient.HttpClient
  const registry = yield* CircuitBreaker.Registry
  const limiter = yield* Connections.make({
    total: options.maxConnections ?? 100,
    perHost: options.maxConnectionsPerHost ?? 10
  })
  const defaultTimeout = Duration.decode(options.timeout ?? "30 seconds")
  const capacity =
    options.cache === undefined || options.cache === false ? 0 : options.cache === true ? 1000 : options.cache.capacity
  const cache = yield* Ref.make(new Map<string, unknown>())
  const agentOf = <A>(ref: Agent<A> | string): Agent<A> =>
    typeof ref === "string" ? (agent({ url: ref }) as Agent<A>) : ref

  const remember = (key: string, result: unknown): Effect.Effect<void> =>
    capacity === 0
      ? Effect.void
      : Ref.update(cache, (map) => {
          map.delete(key)
          map.set(key, result)
          if (map.size > capacity) map.delete(map.keys().next().value!)
          return map
        })

  const send = <A>(
    task: Task<A>,
    target: Agent<A>,
    host: string,
    timeout: Duration.Duration,
    dependencies: Record<string, unknown> | undefined
  ): Effect.Effect<A, ModelError | TimeoutError> => {
    const body: TaskBody = {
      task_id: task.id,
      intent: task.intent,
      concept: task.concept,
      args: task.args ?? null,
      ...(dependencies === undefined ? {} : { dependencies })
    }
    return HttpClientRequest.post(target.url).pipe(
      HttpClientRequest.acceptJson,
      HttpClientRequest.bodyJson(body),
      Effect.mapError(() => argsNotJson(task as Task<unknown>, target.name)),
      Effect.flatMap((request) =>
        Http.executeText(client, request, { provider: target.name }).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new TimeoutError({ limit: "request", timeout, provider: target.name })
          }),
          limiter.withPermit(host)
        )
      ),
      Effect.flatMap((text) => target.decode(text, task.id))
    )
  }

  const callWith = <A>(
    task: Task<A>,
    dependencies: Record<string, unknown> | undefined
  ): Effect.Effect<TaskRecord<A>> =>
    Effect.gen(function* () {
      const startedAt = yield* Clock.currentTimeMillis
      const target = agentOf(task.agent)
      const base = { taskId: task.id, agent: target.name, url: target.url, startedAt }
      const timeout = task.timeout === undefined ? (target.timeout ?? defaultTimeout) : Duration.decode(task.timeout)
      // Only the cache needs a key: without it, args go no further than `send`, which reports them.
      const key = capacity === 0 ? Either.right(undefined) : keyOf(task as Task<unknown>, target as Agent<unknown>)
      const checked = Either.all([hostOf(target.url), key])
      const outcome: Either.Either<A, ModelError | TimeoutError | CircuitOpenError> = Either.isLeft(checked)
        ? Either.left(checked.left)
        : yield* Effect.either(
            Effect.flatMap(registry.get(target.url, options.breaker), (breaker) =>
              breaker.run(send(task, target, checked.right[0], timeout, dependencies))
            )
          )
      const cacheKey = Either.getOrUndefined(key)
      const durationMs = (yield* Clock.currentTimeMillis) - startedAt
      let record: TaskRecord<A>
      if (Either.isRight(outcome)) {
        if (cacheKey !== undefined) yield* remember(cacheKey, outcome.right)
        record = { ...base, status: "success", result: outcome.right, durationMs }
      } else {
        const error = outcome.left
        switch (error._tag) {
          case "CircuitOpenError": {
            const cached = cacheKey === undefined ? undefined : (yield* Ref.get(cache)).get(cacheKey)
            record = {
              ...base,
              status: "service_unavailable",
              error: { message: error.message, reason: "CircuitOpen" },
              durationMs,
              ...(cached === undefined ? {} : { result: cached as A, fromCache: true })
            }
            break
          }
          case "TimeoutError":
            record = { ...base, status: "timeout", error: { message: error.message, reason: "Timeout" }, durationMs }
            break
          case "ModelError":
            record = {
              ...base,
              status: "error",
              error: {
                message: error.message,
                reason: error.reason,
                ...(error.status === undefined ? {} : { httpStatus: error.status }),
                ...(error.field === undefined ? {} : { field: error.field })
              },
              durationMs
            }
        }
      }
      yield* countRecord(record)
      return record
    })

  const call = Effect.fn("HttpAgent.call")(function* <A>(task: Task<A>) {
    yield* Effect.annotateCurrentSpan({ "agent.task_id": task.id })
    return yield* callWith(task, undefined)
  }) as Service["call"]

  const dispatch = Effect.fn("HttpAgent.dispatch")(function* (
    tasks: ReadonlyArray<Task>,
    dispatchOptions?: DispatchOptions
  ) {
    yield* Effect.annotateCurrentSpan({ "agent.tasks": tasks.length })
    const pipeline = yield* Pipeline.fromSteps<void, TaskRecord, TaskRecord, never>(
      tasks.map((task) => ({
        name: task.id,
        dependsOn: task.dependsOn,
        run: ({ deps }) => {
          const results = (task.dependsOn ?? []).length === 0 ? undefined : resultsOf(deps)
          return Effect.filterOrFail(callWith(task, results), usable, (record) => record)
        }
      })),
      { onFailure: "continue", concurrency: dispatchOptions?.concurrency }
    )
    const result = yield* Pipeline.run(pipeline, undefined)
    // `callWith` counts the records it makes; the ones made here (skipped) are counted below.
    const made: Array<TaskRecord> = []
    const own = (record: TaskRecord): TaskRecord => {
      made.push(record)
      return record
    }
    const records = tasks.map((task): TaskRecord => {
      const outcome = result.steps[task.id]!
      switch (outcome.status) {
        case "succeeded":
          return outcome.output
        case "failed":
          if (outcome.error !== undefined) return outcome.error
          break
        case "skipped": {
          const target = agentOf(task.agent)
          const root = result.steps[outcome.failedStep]
          const rootStatus =
            root?.status === "failed" && root.error !== undefined ? root.error.status : (root?.status ?? "error")
          return own({
            taskId: task.id,
            agent: target.name,
            url: target.url,
            status: "skipped",
            error: {
              message:
                outcome.dependency === outcome.failedStep
                  ? `dependency "${outcome.dependency}" did not succeed (${rootStatus})`
                  : `dependency "${outcome.dependency}" was skipped (task "${outcome.failedStep}": ${rootStatus})`,
              reason: "DependencyFailed",
              dependency: outcome.dependency
            },
            startedAt: outcome.at,
            durationMs: 0
          })
        }
      }
      const target = agentOf(task.agent)
      return own({
        taskId: task.id,
        agent: target.name,
        url: target.url,
        status: "error",
        error: { message: Pipeline.describeOutcome(outcome), reason: "Unknown" },
        startedAt: outcome.startedAt,
        durationMs: outcome.durationMs
      })
    })
    yield* Effect.forEach(made, countRecord, { discard: true })
    return records
  })

  const service: Service = { call, dispatch, connections: limiter.stats }
  return service
})

const resultsOf = (deps: Record<string, unknown>): Record<string, unknown> => {
  const results: Record<string, unknown> = {}
  for (const [id, record] of Object.entries(deps)) results[id] = (record as TaskRecord).result
  return results
}

/**
 * The service, needing an `HttpClient` (e.g. `NodeHttpClient.layerUndici`) and a
 * `CircuitBreaker.Registry` (shared with everything else that uses breakers).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<HttpAgents, never, HttpClient.HttpClient | CircuitBreaker.Registry> =>
  Layer.effect(HttpAgents, make(options))

/**
 * Sends one task through the `HttpAgents` service.
 *
 * @since 0.1.0
 * @category accessors
 */
export const call = <A = unknown>(task: Task<A>): Effect.Effect<TaskRecord<A>, never, HttpAgents> =>
  Effect.flatMap(HttpAgents, (service) => service.call(task))

/**
 * Sends a batch through the `HttpAgents` service.
 *
 * @since 0.1.0
 * @category accessors
 */
export const dispatch = (
  tasks: ReadonlyArray<Task>,
  options?: DispatchOptions
): Effect.Effect<ReadonlyArray<TaskRecord>, Pipeline.PipelineError, HttpAgents> =>
  Effect.flatMap(HttpAgents, (service) => service.dispatch(tasks, options))
