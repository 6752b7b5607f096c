/**
 * Agents over HTTP: a task is POSTed to an agent's URL as `{ task_id, intent, concept, args }`
 * and the answer is decoded with a `Schema`. Every task ends in a status record (`success`,
 * `error`, `timeout`, `service_unavailable`, or `skipped` in a batch), never in a failure.
 *
 * Each task runs through the executor's one policy pipeline (see `Policy.ts`): the
 * per-request deadline, the agent's retry policy, its breaker (one circuit per agent URL),
 * its rate limit, and the fallback agents, in that order; the calls are counted in `Stats`
 * under the agent's name (domain `"agent"`; the first 100 names, later ones together under
 * `"(other)"`), which {@link stats} reads back with the status counts. Connections are limited in total and per host for every agent together; every
 * answer's body is bounded. A task may name a (concept, intent) instead of an agent: the
 * `Discovery` service finds one. Batches with dependencies run on the `Pipeline` scheduler.
 *
 * @since 0.1.0
 */
import { Context, type Duration, Effect, Layer, type Redacted, Schema, type Scope } from "effect"
import type { HttpClient } from "effect/http"
import type { ModelError } from "./AiError.js"
import type * as CircuitBreaker from "./CircuitBreaker.js"
import type { Executor } from "./Executor.js"
import type * as Input from "./Input.js"
import { agentDomain } from "./Metrics.js"
import type { PipelineError } from "./Pipeline.js"
import type { RetryPolicy, RetryPolicyInput } from "./Policy.js"
import type { ExecutionStats, LatencyStats, Stats } from "./Stats.js"
import type { ConnectionStats } from "./agent/connections.js"
import { makeAgent } from "./agent/define.js"
import { makeService } from "./agent/service.js"
import * as Decode from "./Model/http/decode.js"

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
  dependencies: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
})

/**
 * @since 0.1.0
 * @category models
 */
export type TaskBody = typeof TaskBody.Type

/**
 * Any JSON value. Unlike `Schema.Unknown`, a missing property fails ("is missing"); a number
 * that is not finite, at any depth (a literal such as `1e400`, which parses as `Infinity`
 * and would be written back as `null`), fails naming where it is.
 *
 * @since 0.1.0
 * @category schemas
 */
export const JsonValue = Schema.Union([
  Schema.Null,
  Schema.String,
  Schema.Number,
  Schema.Boolean,
  Schema.Array(Schema.Unknown),
  Schema.Record(Schema.String, Schema.Unknown)
]).check(Decode.finite)

/**
 * The default answer of an agent. `result` is required (it may be `null`), but in a report of a failed task
 * (`status: "error"`, its words in `error` or `message`); `task_id` must be the task's own id.
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
 * What an agent's answer decodes to: the task's result, or the agent's own report that the
 * task failed (`status: "error"`): the agent is up, so that counts on no breaker and falls
 * back to no other agent.
 *
 * @since 0.2.0
 * @category models
 */
export type Decoded<A> =
  | { readonly _tag: "Result"; readonly value: A }
  | { readonly _tag: "Reported"; readonly message: string }

/**
 * A remote agent: where it lives, how its answers decode, and its own policies. Build it
 * with {@link agent}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Agent<A = unknown> {
  readonly name: string
  readonly url: string
  /** Per-request timeout for this agent (the service default otherwise). */
  readonly timeout?: Duration.Duration | undefined
  /** Retries of this agent's requests (the service default otherwise). */
  readonly retry?: RetryPolicy | undefined
  /** Sent with every request; `Redacted` values stay redacted until the request is built. */
  readonly headers: Readonly<Record<string, string | Redacted.Redacted<string>>>
  /** Header values never to appear in an error message. */
  readonly secrets: ReadonlyArray<Redacted.Redacted>
  /** The task's result from the parsed answer, or a `Decode` error naming the field. */
  readonly decode: (answer: unknown, taskId: string) => Effect.Effect<Decoded<A>, ModelError>
  /** Why this agent was refused: each task sent to it ends in an `error` record naming the field. */
  readonly issue?: Input.Issue | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AgentOptions {
  readonly url: string
  /**
   * Name in records, metrics and stats (default: the URL as the URL parser writes it, without its query string, so
   * `HTTP://h/x/../a` is `http://h/a`); a name that is a URL is shown so too. `(other)`, `unknown` and names starting with `discovery:` are the records' own (refused).
   */
  readonly name?: string | undefined
  readonly timeout?: Input.DurationInput | undefined
  readonly retry?: RetryPolicy | RetryPolicyInput | undefined
  /**
   * Sent with every request; give secrets as `Redacted` (they are scrubbed from errors). Spans show only allow-listed
   * headers. A `Redacted` one is refused on a plain `http` URL off loopback (it would travel in clear text), unless
   * `allowPlainHttpSecrets` is true.
   */
  readonly headers?: Readonly<Record<string, string | Redacted.Redacted>> | undefined
  /**
   * Sends `Redacted` headers over a plain `http` URL off loopback: for a network that is the application's own (a
   * service mesh that encrypts between services, a private link). Default false: such an agent is refused.
   *
   * @since 0.3.0
   */
  readonly allowPlainHttpSecrets?: boolean | undefined
}

/**
 * Describes an agent. Without `answer`, answers are decoded with {@link Answer} and the
 * record's result is the answer's `result` (a `status` of `"error"` or `"failed"`, in any
 * case, makes an `error` record; any other status is a result); with `answer`, the whole decoded answer is the result. Every option is
 * checked: an invalid one (`timeout: NaN`, a URL with credentials) is kept as the agent's
 * `issue`, and each task sent to it ends in an `error` record naming the field.
 *
 * @since 0.1.0
 * @category constructors
 */
export const agent: {
  (options: AgentOptions): Agent<unknown>
  <A, I>(options: AgentOptions & { readonly answer: Schema.Codec<A, I> }): Agent<A>
} = makeAgent(Answer)

/**
 * A task for an agent. `dependsOn` (task ids) matters only in a batch.
 *
 * @since 0.1.0
 * @category models
 */
export interface Task<A = unknown> {
  readonly id: string
  /** An agent or its URL; without one, the `Discovery` service finds agents for (concept, intent). */
  readonly agent?: Agent<A> | string | undefined
  /**
   * Agents tried in order when the agent fails in a way that falls back (its breaker is open, it is down);
   * for a task left to discovery, after the agents discovery found. Those are sent no headers: one of these agents
   * (not a bare URL) at the URL of one found is sent in its place, with its headers.
   */
  readonly fallback?: ReadonlyArray<Agent<A> | string> | undefined
  readonly intent: string
  readonly concept: string
  /** Any JSON value (a `NaN` or `Infinity` in it is refused: JSON would write it as `null`). */
  readonly args?: unknown
  readonly dependsOn?: ReadonlyArray<string> | undefined
  /** Per-request timeout; wins over the agent's and the service's. */
  readonly timeout?: Input.DurationInput | undefined
  /**
   * Key of the last good result kept for `service_unavailable` (default: url + intent + concept + args, and in
   * a batch the results of its dependencies); 1 to 1,000 characters, as `id`, `intent` and `concept`.
   */
  readonly cacheKey?: string | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export type Status = "success" | "error" | "timeout" | "service_unavailable" | "skipped"

/**
 * The outcome of one task.
 *
 * - `success`: an agent answered 2xx and the answer decoded.
 * - `error`: an HTTP status outside 2xx (`httpStatus`), a connection failure, an answer that
 *   did not decode (`reason: "Decode"`, `field` names it), was too large (`TooLarge`) or
 *   reported an error, a request body over `maxRequestBytes` (`TooLarge`, nothing sent), or a
 *   task or agent that is invalid (`InvalidRequest`, `field`).
 * - `timeout`: no answer within the request timeout.
 * - `service_unavailable`: the agent's breaker is open (with a `ResponseCache`, `result` is
 *   the last good result for the task's key and `fromCache` is `true`), or discovery found
 *   no agent or is down.
 * - `skipped` (batches): a dependency did not succeed; `error.dependency` names it.
 *
 * @since 0.1.0
 * @category models
 */
export interface TaskRecord<A = unknown> {
  readonly taskId: string
  /**
   * The agent that answered (or the last one tried). A task that sent nothing names its own
   * agent, `discovery:<name>` when discovery was to find one, or `unknown` when it names no
   * valid agent.
   */
  readonly agent: string
  /** Its URL as the URL parser writes it (`HTTP://h/x/../a` is `http://h/a`), without the query string nor fragment. */
  readonly url: string
  readonly status: Status
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
  /** Queueing for a connection, retries and fallbacks included. */
  readonly durationMs: number
  /** Requests made, retries and fallback agents included. */
  readonly attempts: number
  readonly fromCache?: boolean | undefined
  /** A fallback agent answered. */
  readonly fallbackUsed?: boolean | undefined
}

/**
 * Checked when the layer is built (an `OptionError` names the field).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Requests in flight across all agents. Default 100. */
  readonly maxConnections?: number | undefined
  /** Requests in flight to one host (`host:port`). Default 10. */
  readonly maxConnectionsPerHost?: number | undefined
  /** Default per-request timeout. Default 30 seconds. */
  readonly timeout?: Input.DurationInput | undefined
  /** Bound of an answer's body. Default 8 MiB. */
  readonly maxResponseBytes?: number | undefined
  /**
   * Bound of a task's request body (its args, and in a batch its dependencies' results), in bytes;
   * a task over it ends in an `error` record (`TooLarge`) and sends nothing. Default 4 MiB.
   */
  readonly maxRequestBytes?: number | undefined
  /** Default retries of agent requests. Default none (tasks need not be idempotent). */
  readonly retry?: RetryPolicy | RetryPolicyInput | false | undefined
  /** Breakers of the agents' own (in this process). Default: the executor's shared breakers, or these defaults. */
  readonly breaker?: CircuitBreaker.Options | undefined
  /** Keep good results in the `ResponseCache` in context, for `service_unavailable` records. Default true. */
  readonly cache?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface DispatchOptions {
  /**
   * Tasks running at once: a whole number of at least 1, or `Infinity`. Default the service's
   * `maxConnections` (more would only wait for a connection slot, each task's deadline running).
   */
  readonly concurrency?: number | undefined
}

// Re-exported by name: a type an application infers from it must be nameable through this module.
export type { ConnectionStats }

/**
 * The figures of one agent: status counts from `orchestra_agent_tasks_total` (cumulative),
 * and its calls from `Stats` (the current window): success rate, latency (retries included).
 *
 * @since 0.2.0
 * @category models
 */
export interface AgentStats {
  readonly agent: string
  readonly tasks: number
  readonly statuses: Readonly<Record<Status, number>>
  /** % of the agent's finished calls that answered. */
  readonly successRate: number
  readonly latency: LatencyStats
  readonly calls: ExecutionStats
}

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
   * input order. Fails only when the batch itself is invalid (a `PipelineError`: duplicate
   * ids, unknown dependencies, cycles, a task without an id, `concurrency` not a whole
   * number of at least 1).
   */
  readonly dispatch: (
    tasks: ReadonlyArray<Task>,
    options?: DispatchOptions
  ) => Effect.Effect<ReadonlyArray<TaskRecord>, PipelineError>
  readonly connections: Effect.Effect<ConnectionStats>
  /**
   * The figures of an agent (or agent name, or URL: read without its query). The first 100
   * agent names have series of their own; a name past them answers the figures of all of them,
   * `agent: "(other)"`. What is no agent (`null`) reads the tasks that named none (`"unknown"`), where the records of a
   * refused agent (a typo'd URL) are counted too: it takes no series of its own.
   */
  readonly stats: (agent: Agent<unknown> | string) => Effect.Effect<AgentStats>
}

/**
 * @since 0.1.0
 * @category services
 */
export class HttpAgents extends Context.Service<HttpAgents, Service>()("effect-orchestra/HttpAgent") {}

/**
 * The domain under which agents' calls are counted in `Stats`.
 *
 * @since 0.2.0
 * @category constants
 */
export const statsDomain: typeof agentDomain = agentDomain

/**
 * Builds the service on the `Executor` (its pipeline, shared breakers and rate limits),
 * `Stats` and an `HttpClient`; the `Discovery` and `ResponseCache` services are used when
 * present. One connection limiter for all agents.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  given: Options = {}
): Effect.Effect<Service, Input.OptionError, Executor | HttpClient.HttpClient | Scope.Scope | Stats> =>
  makeService(given, { agent, statsDomain })

/**
 * The service, needing the `Executor` and `Stats` (e.g. from `Orchestra.layer`) and an
 * `HttpClient` (`NodeHttpClient.layerUndici`); a `Discovery` and a `ResponseCache` are
 * used when given.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<HttpAgents, Input.OptionError, HttpClient.HttpClient | Executor | Stats> =>
  Layer.effect(HttpAgents, make(options))

/**
 * Sends one task through the `HttpAgents` service.
 *
 * @since 0.1.0
 * @category accessors
 */
export const call = <A = unknown>(task: Task<A>): Effect.Effect<TaskRecord<A>, never, HttpAgents> =>
  Effect.flatMap(Effect.service(HttpAgents), (service) => service.call(task))

/**
 * Sends a batch through the `HttpAgents` service.
 *
 * @since 0.1.0
 * @category accessors
 */
export const dispatch = (
  tasks: ReadonlyArray<Task>,
  options?: DispatchOptions
): Effect.Effect<ReadonlyArray<TaskRecord>, PipelineError, HttpAgents> =>
  Effect.flatMap(Effect.service(HttpAgents), (service) => service.dispatch(tasks, options))

/**
 * The figures of one agent from the `HttpAgents` service.
 *
 * @since 0.2.0
 * @category accessors
 */
export const stats = (agent: Agent<unknown> | string): Effect.Effect<AgentStats, never, HttpAgents> =>
  Effect.flatMap(Effect.service(HttpAgents), (service) => service.stats(agent))
