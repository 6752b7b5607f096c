/**
 * The `HttpAgents` service built (`HttpAgent.make`): its options checked, the breakers (the
 * executor's shared ones, or its own), the `Discovery` and `ResponseCache` when present, one
 * HTTP client and one connection limiter for every agent, the task call (`task.ts`) and
 * batches (`batch.ts`) on them, and each agent's figures read back from the metrics and
 * `Stats`.
 *
 * @internal
 */
import { Duration, Effect, Option, Result } from "effect"
import * as CircuitBreaker from "../CircuitBreaker.js"
import { Discovery, type Endpoint } from "../Discovery.js"
import { Executor } from "../Executor.js"
import type { Agent, AgentOptions, DispatchOptions, Options, Service, Status, Task, TaskRecord } from "../HttpAgent.js"
import * as Input from "../Input.js"
import * as Client from "../Model/http/client.js"
import { decodeRetry } from "../Policy.js"
import { ResponseCache } from "../ResponseCache.js"
import * as Metrics from "../Metrics.js"
import { Stats } from "../Stats.js"
import { isOwnSeriesLabel } from "../stats/labels.js"
import { dispatch as runBatch } from "./batch.js"
import * as Connections from "./connections.js"
import { checkCopy } from "./define.js"
import * as AgentMetrics from "./metrics.js"
import { agentName, isAgentRef, isUrl, labelOf as taskLabel, noAgent, reservedName, seriesOf } from "./names.js"
import { makeCall } from "./task.js"

/** What the service takes from `HttpAgent.ts`. */
export interface Env {
  /** `HttpAgent.agent`: the agent of a URL or of a discovered endpoint. */
  readonly agent: (options: AgentOptions) => Agent<unknown>
  /** `HttpAgent.statsDomain`. */
  readonly statsDomain: string
}

const optionKeys: ReadonlySet<string> = new Set([
  "maxConnections",
  "maxConnectionsPerHost",
  "timeout",
  "maxResponseBytes",
  "maxRequestBytes",
  "retry",
  "breaker",
  "cache"
])

const checkOptions = (options: Options) => {
  const notObject = Input.notAnObject("options", options)
  if (notObject !== undefined) return Result.fail(notObject)
  const misspelt = Input.misspeltKey(options, optionKeys)
  if (misspelt !== undefined) return Result.fail(misspelt)
  return Result.flatMap(Input.readFields(options), (read) => checkRead(read as Options))
}

// Read once (`Input.readFields`): a getter that throws is an issue naming its field, not a defect.
const checkRead = (options: Options) => {
  // `cache: "false"` or `0` kept the cache on; `breaker: null` made breakers of the service's own.
  const notBoolean = Input.notABoolean(options, ["cache"])
  if (notBoolean !== undefined) return Result.fail(notBoolean)
  const breaker: unknown = options.breaker
  if (breaker !== undefined && (typeof breaker !== "object" || breaker === null || Array.isArray(breaker))) {
    return Result.fail<Input.Issue>({ path: "breaker", message: "expected an object of breaker options" })
  }
  return Result.map(
    Input.all([
      Input.positiveInt("maxConnections", Input.orDefault(options.maxConnections, 100)),
      Input.positiveInt("maxConnectionsPerHost", Input.orDefault(options.maxConnectionsPerHost, 10)),
      Input.duration("timeout", Input.orDefault(options.timeout, "30 seconds")),
      Input.positiveInt("maxResponseBytes", Input.orDefault(options.maxResponseBytes, 8 * 1024 * 1024)),
      Input.positiveInt("maxRequestBytes", Input.orDefault(options.maxRequestBytes, 4 * 1024 * 1024)),
      options.retry === undefined || options.retry === false ? Result.succeed(undefined) : decodeRetry(options.retry)
    ]),
    (checked) => [checked, options] as const
  )
}

/** How many agents made from a URL or a discovered endpoint a service keeps (the least recently used goes). */
export const agentsKept = 256

/**
 * `make` remembered per key, for the `agentsKept` keys used last: a task that names its agent by
 * URL would otherwise check the URL and options again on every call, and miss the request base
 * kept per agent. A key of `undefined` is made each time.
 */
const remembered = <I>(key: (input: I) => string | undefined, make: (input: I) => Agent<unknown>) => {
  const kept = new Map<string, Agent<unknown>>()
  return (input: I): Agent<unknown> => {
    const k = key(input)
    if (k === undefined) return make(input)
    const hit = kept.get(k)
    if (hit !== undefined) {
      kept.delete(k)
      kept.set(k, hit)
      return hit
    }
    const made = make(input)
    if (kept.size >= agentsKept) kept.delete(kept.keys().next().value as string)
    kept.set(k, made)
    return made
  }
}

// Only what makes the agent is in the key; a registry's endpoint of another shape is made each time.
const endpointKey = ({ url, name, timeout }: Endpoint): string | undefined =>
  typeof url === "string" &&
  (name === undefined || typeof name === "string") &&
  (timeout === undefined || typeof timeout === "string" || typeof timeout === "number")
    ? JSON.stringify([url, name ?? null, timeout ?? null])
    : undefined

/**
 * How many agent names a service gives metric and `Stats` series of their own: tasks that name
 * their agents by URL (one per resource) would grow `/metrics` and the figures kept here with
 * every URL. The names after count in one series named {@link otherAgents}.
 */
export const maxAgentSeries = 100

/** The name of the series the agents past {@link maxAgentSeries} count in. */
export const otherAgents = Metrics.otherSeries

const statuses: ReadonlyArray<Status> = ["success", "error", "timeout", "service_unavailable", "skipped"]

/** Builds the service; `options` as `HttpAgent.make` was given them (`null` included). */
export const makeService = Effect.fnUntraced(function* (given: Options, env: Env) {
  const { agent, statsDomain } = env
  const [[maxConnections, perHost, timeout, maxResponseBytes, maxRequestBytes, retry], options] =
    yield* Input.orOptionError(checkOptions(given))
  const executor = yield* Executor
  const stats = yield* Stats
  const breaker =
    options.breaker === undefined && executor.guards.breaker !== undefined
      ? executor.guards.breaker
      : yield* CircuitBreaker.makeMemory(options.breaker ?? {}).pipe(
          Effect.mapError((error) => Input.underPath(error, "breaker."))
        )
  const discovery = Option.getOrUndefined(yield* Effect.serviceOption(Discovery))
  const cache = options.cache === false ? undefined : Option.getOrUndefined(yield* Effect.serviceOption(ResponseCache))
  const client = yield* Client.make({
    // The per-request deadline is the executor's; this one only bounds what nothing else does.
    timeout: Duration.days(365),
    streamIdleTimeout: timeout,
    maxResponseBytes,
    maxEventBytes: maxResponseBytes
  })
  const connections = Connections.make({ total: maxConnections, perHost })
  const ofUrl = remembered<string>(
    (url) => url,
    (url) => agent({ url })
  )
  // An agent not made by `HttpAgent.agent` (a copy with a field changed) is checked once, as that checks one.
  const copies = new WeakMap<Agent<unknown>, Agent<unknown>>()
  const checkedCopy = (ref: Agent<unknown>): Agent<unknown> => {
    let found = copies.get(ref)
    if (found === undefined) {
      found = checkCopy(ref, agent)
      copies.set(ref, found)
    }
    return found
  }
  const agentOf = (ref: Agent<unknown> | string): Agent<unknown> =>
    typeof ref === "string" ? ofUrl(ref) : checkedCopy(ref)
  const metrics = AgentMetrics.make(yield* Effect.context<never>())
  yield* Effect.addFinalizer(() => Effect.sync(metrics.release))
  // The first maxAgentSeries names have series of their own; a name once given one keeps it. A name
  // no label can hold has none, as a breaker's or rate limit's key: one past maxOwnLabelChars (a URL of
  // a long path) was written whole in each of its series on every scrape, and one holding a lone
  // surrogate (a Discovery service's of the application's own) made a scrape Prometheus refuses.
  const ownSeries = new Set<string>()
  const seriesName = (name: string): string => {
    if (ownSeries.has(name) || name === otherAgents) return name
    if (ownSeries.size >= maxAgentSeries || !isOwnSeriesLabel(name)) return otherAgents
    ownSeries.add(name)
    return name
  }
  const call = makeCall({
    seriesName,
    statsDomain,
    executor,
    breaker,
    rateLimit: executor.guards.rateLimit,
    connections,
    client,
    discovery,
    cache,
    timeout,
    maxRequestBytes,
    retry,
    metrics,
    agentOf,
    // A lookup's endpoint may carry fields of its registry's own: only these make the agent. A name the records use
    // for themselves (a registry's `unknown` for an agent it has none for) names no agent: its URL does.
    fromEndpoint: remembered(endpointKey, ({ url, name, timeout }) =>
      agent({ url, name: typeof name === "string" && reservedName(name) !== undefined ? undefined : name, timeout })
    )
  })

  const labelOf = (task: Task) => taskLabel(task, agentOf, discovery)

  const agentStats = Effect.fn("HttpAgent.stats")(function* (ref: Agent<unknown> | string) {
    // What is no agent (null from JavaScript) reads the records of the tasks that named none, as they are counted.
    // A refused agent's records are counted with those, too: given as an agent, or as a URL (a name is no agent).
    const given =
      typeof ref === "string"
        ? isUrl(ref) && agentOf(ref).issue !== undefined
          ? noAgent
          : agentName(ref)
        : isAgentRef(ref) && agentOf(ref).issue === undefined
          ? agentOf(ref).name
          : noAgent
    // A lookup takes no series: a name not seen while there is room has none yet (all zeros).
    const name =
      ownSeries.has(given) || (ownSeries.size < maxAgentSeries && isOwnSeriesLabel(given)) ? given : otherAgents
    const counts = {} as Record<Status, number>
    let tasks = 0
    for (const status of statuses) {
      const n = metrics.tasks(name, status)
      counts[status] = n
      tasks += n
    }
    // Its own names: a filter the check cannot refuse.
    const calls = yield* Effect.sync(() => stats.snapshotUnsafe({ provider: name, domain: statsDomain }))
    return { agent: name, tasks, statuses: counts, successRate: calls.successRate, latency: calls.latency, calls }
  })

  return {
    // The span's `agent.task_id` is set by `call` once it has read the task (a getter may throw).
    call: Effect.fn("HttpAgent.call")(function* <A>(task: Task<A>) {
      return (yield* call(task as Task, undefined)) as TaskRecord<A>
    }) as Service["call"],
    dispatch: Effect.fn("HttpAgent.dispatch")(function* (
      tasks: ReadonlyArray<Task>,
      dispatchOptions?: DispatchOptions
    ) {
      yield* Effect.annotateCurrentSpan({ "agent.tasks": Array.isArray(tasks) ? tasks.length : 0 })
      return yield* runBatch(tasks, dispatchOptions, {
        call,
        labelOf,
        metrics,
        seriesOf: (task, name) => seriesName(seriesOf(task, name, agentOf)),
        defaultConcurrency: maxConnections
      })
    }),
    connections: connections.stats,
    stats: agentStats
  } satisfies Service
})
