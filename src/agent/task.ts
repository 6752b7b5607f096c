/**
 * One HTTP agent task, start to record: its fields checked, its agents found (given, or
 * from discovery), its body built, then one plan through the executor's pipeline (per
 * agent: the request deadline, retries, the breaker of the agent's URL, the rate limit;
 * the fallback agents after it), each request under the shared connection limit with a
 * bounded body, and the outcome turned into a status record, counted in the agent metrics.
 *
 * @internal
 */
import { createHash } from "node:crypto"
import { Cause, Clock, Duration, Effect, Exit, Option, Redacted, Result } from "effect"
import { HttpClientRequest, UrlParams } from "effect/http"
import { type AiError, ModelError } from "../AiError.js"
import type { Service as DiscoveryService, Endpoint } from "../Discovery.js"
import { isOwnService } from "../discovery/checks.js"
import type { Service as ExecutorService, Step } from "../Executor.js"
import type { Agent, Decoded, Task, TaskRecord } from "../HttpAgent.js"
import * as Input from "../Input.js"
import type { GenerateResponse } from "../Model.js"
import type * as Client from "../Model/http/client.js"
import { keyedBreaker, messageOf } from "../pipeline/step.js"
import type { BreakerGuard, LimitGuard, Slot } from "../policy/plan.js"
import type { RetryPolicy } from "../Policy.js"
import type { Service as CacheService } from "../ResponseCache.js"
import { makeBody, type TooLarge } from "./body.js"
import { checkTask, type Invalid, maxNameLength, readTask, shownId } from "./checks.js"
import type { Connections } from "./connections.js"
import { readEndpoints, resolveOwn } from "./lookup.js"
import type { AgentMetrics } from "./metrics.js"
import {
  type AgentOf,
  breakerKey,
  discoveryAgent,
  display,
  endpointOf,
  type Label,
  labelOf,
  noAgent,
  withoutFragment
} from "./names.js"
import { monotonicMillis } from "../stats/clock.js"

/** What a task needs from the service. */
export interface Env {
  readonly executor: ExecutorService
  readonly breaker: BreakerGuard
  readonly rateLimit: LimitGuard | undefined
  readonly connections: Connections
  readonly client: Client.Client
  readonly discovery: DiscoveryService | undefined
  readonly cache: CacheService | undefined
  readonly timeout: Duration.Duration
  /** `HttpAgent.Options.maxRequestBytes`: the bound of a task's request body. */
  readonly maxRequestBytes: number
  readonly retry: RetryPolicy | undefined
  /** Where the agent metrics are recorded (the service's). */
  readonly metrics: AgentMetrics
  readonly agentOf: AgentOf
  readonly fromEndpoint: (endpoint: Endpoint) => Agent<unknown>
  /** `HttpAgent.statsDomain`: the domain the calls are counted under. */
  readonly statsDomain: string
  /** The name an agent's metric and `Stats` series carry (`service.ts`'s bound on their number). */
  readonly seriesName: (agent: string) => string
}

export type Call = (task: Task, dependencies: Record<string, unknown> | undefined) => Effect.Effect<TaskRecord>

/** Counts a record under `series` (its agent's series name): its status, and its duration for the tasks that went out. */
export const count = (record: TaskRecord, series: string, metrics: AgentMetrics): void => metrics.count(record, series)

/** What every request to an agent starts from: its URL, `Accept` and headers (secrets unwrapped), and its host. */
interface Prepared {
  readonly request: HttpClientRequest.HttpClientRequest
  readonly host: string
  /** The URL has a query: its values (a token) are shown redacted in spans, as records leave the query out. */
  readonly hasQuery: boolean
  /** The endpoint it is sent to, however the URL is written (`endpointOf`): an agent listed twice is asked once. */
  readonly endpoint: string
  /** The key of its breaker (`breakerKey`). */
  readonly breaker: string
  /** Its URL as records show it (`display`). */
  readonly shown: string
  /** The body's content type: the agent's own `content-type` header (a vendor JSON type its API asks for), or JSON. */
  readonly contentType: string
}

/** Every query parameter name (`UrlParams.CurrentRedactedNames`). */
const everyName: ReadonlyArray<RegExp> = [/^/]

/**
 * The key of the per-host limit: `host:port`, the port written out when the URL leaves it to its
 * scheme. `url.host` is `h` for both `http://h` and `https://h` (ports 80 and 443), which shared a
 * limit the docs give per `host:port`.
 */
const hostPort = (url: URL): string =>
  url.port === "" ? `${url.hostname}:${url.protocol === "https:" ? 443 : 80}` : url.host

const prepare = (agent: Agent<unknown>): Prepared => {
  const headers: Record<string, string> = {}
  let contentType = "application/json"
  for (const [name, value] of Object.entries(agent.headers)) {
    headers[name] = Redacted.isRedacted(value) ? Redacted.value(value) : value
    if (name.toLowerCase() === "content-type") contentType = headers[name]
  }
  // The fragment is never sent; spans showed it.
  const url = withoutFragment(agent.url)
  return {
    // An `accept` of the agent's own wins (a vendor JSON type its API asks for); the answer is read as JSON either way.
    request: HttpClientRequest.post(url).pipe(HttpClientRequest.acceptJson, HttpClientRequest.setHeaders(headers)),
    host: hostPort(new URL(agent.url)),
    hasQuery: url.includes("?"),
    endpoint: endpointOf(agent.url),
    breaker: breakerKey(agent.url),
    shown: display(agent.url),
    contentType
  }
}

/**
 * What an agent answered, as the response cache keeps it: the answer as it came (before its
 * schema decoded it) and the task it answered, so that reading it back decodes it again into
 * what the agent's schema makes (a `Date`, not its JSON string). None for an answer JSON
 * cannot write (one nested too deep overflows `JSON.stringify`'s stack).
 */
const wrap = (agent: string, taskId: string, answer: unknown): GenerateResponse | undefined => {
  let text: string
  try {
    text = JSON.stringify({ task_id: taskId, answer }) ?? "null"
  } catch {
    return undefined
  }
  return {
    text,
    finishReason: "stop",
    usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 },
    provider: agent,
    model: keptModel
  }
}

/** Marks what {@link wrap} kept: entries of earlier versions held the decoded result, and are not read. */
const keptModel = "agent-answer"

/** A kept answer decoded again by the agent that gave it (or the task's first agent). */
const unwrap = (
  response: GenerateResponse,
  agents: ReadonlyArray<Agent<unknown>>
): Effect.Effect<Option.Option<unknown>> => {
  if (response.model !== keptModel) return Effect.succeedNone
  let kept: unknown
  try {
    kept = JSON.parse(response.text)
  } catch {
    return Effect.succeedNone
  }
  if (typeof kept !== "object" || kept === null || typeof (kept as { task_id?: unknown }).task_id !== "string") {
    return Effect.succeedNone
  }
  const { task_id, answer } = kept as { readonly task_id: string; readonly answer: unknown }
  const by = agents.find((agent) => agent.name === response.provider) ?? agents[0]!
  // What an agent's schema refuses (or throws on) now is no cached result, not the call's failure.
  return Effect.matchCause(
    Effect.suspend(() => by.decode(answer, task_id)),
    {
      onFailure: () => Option.none(),
      onSuccess: (decoded) => (decoded._tag === "Result" ? Option.some(decoded.value) : Option.none())
    }
  )
}

// A batch task's dependencies' results are its input as its args are: another document's summary
// is no answer for this one. A task without them keeps the key it always had. The agent is its endpoint
// (`endpointOf`), as its breaker's key: a result kept under one spelling of its URL is served under another.
const cacheKeyOf = (task: Task, endpoint: string, dependencies: Record<string, unknown> | undefined): string =>
  task.cacheKey !== undefined
    ? `agent:key:${task.cacheKey}`
    : `agent:${createHash("sha256")
        .update(
          JSON.stringify(
            dependencies === undefined
              ? [endpoint, task.intent, task.concept, task.args ?? null]
              : [endpoint, task.intent, task.concept, task.args ?? null, dependencies]
          )
        )
        .digest("hex")}`

/** An answer as its agent's schema decoded it, and as it came (for the response cache). */
interface Sent {
  readonly decoded: Decoded<unknown>
  readonly answer: unknown
}

/** Builds the service's `call`; it never fails. */
export const makeCall = (env: Env): Call => {
  // Once per agent, not per request (nor per retry); weakly held, so an agent made for one task's
  // URL goes with it. The unwrapped headers live only in the request, as they did.
  const prepared = new WeakMap<Agent<unknown>, Prepared>()
  const preparedOf = (agent: Agent<unknown>): Prepared => {
    let base = prepared.get(agent)
    if (base === undefined) {
      base = prepare(agent)
      prepared.set(agent, base)
    }
    return base
  }
  const bodyOf = makeBody(env.maxRequestBytes)
  // Sent once the executor gave the attempt its connection slot (its step's `slot`).
  const send = (agent: Agent<unknown>, body: string, taskId: string): Effect.Effect<Sent, AiError> =>
    Effect.suspend(() => {
      const base = preparedOf(agent)
      // The body's own type is what is sent: set as a header only, the agent's was replaced by JSON's.
      const request = HttpClientRequest.bodyText(base.request, body, base.contentType)
      const ctx = { provider: agent.name, secrets: agent.secrets, answerFirst: true }
      const decode = (answer: unknown) => Effect.map(agent.decode(answer, taskId), (decoded) => ({ decoded, answer }))
      const exchange = env.client.json(request, decode, ctx)
      return base.hasQuery ? Effect.provideService(exchange, UrlParams.CurrentRedactedNames, everyName) : exchange
    })

  const call: Call = Effect.fnUntraced(function* (given: Task, dependencies: Record<string, unknown> | undefined) {
    const { task, issue } = readTask(given)
    // Only an id the check would accept: a span attribute of five million characters is no label.
    const id = task?.id
    if (typeof id === "string" && id.length > 0 && id.length <= maxNameLength) {
      yield* Effect.annotateCurrentSpan("agent.task_id", id)
    }
    // `startedAt` is a date (the wall clock's); the duration is read on the monotonic clock, which an
    // NTP step does not move (on the wall clock one back of an hour made a task's duration minus an hour).
    const clock = yield* Clock.Clock
    const startedAt = clock.currentTimeMillisUnsafe()
    const since = monotonicMillis(clock)
    // `series`: where the record is counted when not under its agent's name (a refused agent's).
    const finish = (record: Omit<TaskRecord, "durationMs" | "startedAt" | "taskId">, series?: string) =>
      Effect.sync((): TaskRecord => {
        const done: TaskRecord = {
          taskId: typeof id === "string" ? id : shownId(id),
          startedAt,
          durationMs: monotonicMillis(clock) - since,
          ...record
        }
        count(done, env.seriesName(series ?? done.agent), env.metrics)
        return done
      })
    // `label`: the record's agent and URL when it names no agent (a task left to discovery names it).
    const invalid = (
      agent: Agent<unknown> | undefined,
      field: string,
      message: string,
      label: Label = { agent: noAgent, url: "" }
    ) =>
      finish(
        {
          agent: agent?.name ?? label.agent,
          url: agent === undefined ? label.url : display(agent.url),
          status: "error",
          error: { message: `invalid ${field}: ${message}`, reason: "InvalidRequest", field },
          attempts: 0
        },
        agent?.issue === undefined ? undefined : noAgent
      )

    // A body that cannot be sent: not JSON (`InvalidRequest` naming the field), or past `maxRequestBytes`.
    const unsent = (body: Invalid | TooLarge, agent: Agent<unknown> | undefined, label?: Label) => {
      if ("field" in body) return invalid(agent, body.field, body.message, label)
      return finish({
        agent: agent?.name ?? label?.agent ?? noAgent,
        url: agent === undefined ? (label?.url ?? "") : display(agent.url),
        status: "error",
        error: {
          message: `task ${JSON.stringify(task.id)}: its request body is ${body.atLeast ? "at least " : ""}${body.size} bytes, past maxRequestBytes (${env.maxRequestBytes}); nothing was sent`,
          reason: "TooLarge"
        },
        attempts: 0
      })
    }

    const wrong = issue ?? checkTask(task)
    if (wrong !== undefined) return yield* invalid(undefined, wrong.field, wrong.message)
    // None of these depends on what discovery finds: a task left to it that could never be sent is refused before
    // discovery is asked. It waited for a lookup (up to the service's timeout), and read as `service_unavailable` when
    // discovery was down.
    const checkedTimeout = task.timeout === undefined ? undefined : Input.duration("timeout", task.timeout)
    const body = bodyOf(task, dependencies)
    if (task.agent === undefined) {
      // In the order a task with an agent is refused: its agents, its timeout, its body.
      for (const ref of task.fallback ?? []) {
        const agent = env.agentOf(ref)
        if (agent.issue !== undefined) return yield* invalid(agent, agent.issue.path, agent.issue.message)
      }
      const label = labelOf(task, env.agentOf, env.discovery)
      if (checkedTimeout?._tag === "Failure") {
        return yield* invalid(undefined, "timeout", checkedTimeout.failure.message, label)
      }
      if (typeof body !== "string") return yield* unsent(body, undefined, label)
    }

    // The task's agent, or the ones discovery found for it, then its own fallback agents.
    let listed: Array<Agent<unknown>>
    if (task.agent !== undefined) {
      listed = [env.agentOf(task.agent)]
    } else if (env.discovery !== undefined) {
      const discovery = env.discovery
      // A Discovery service of the application's own may throw, die or never answer (the
      // library's catch their lookups' failures and bound them).
      const found = yield* resolveOwn(discovery, task).pipe(
        Effect.result,
        Effect.catchDefect((defect) =>
          Effect.succeed(
            Result.fail({
              reason: "Unavailable",
              message: `${discovery.name}: resolve threw (${messageOf(Cause.die(defect))})`
            })
          )
        ),
        Effect.timeoutOption(env.timeout),
        Effect.map(
          Option.getOrElse(() =>
            Result.fail({
              reason: "Unavailable",
              message: `${discovery.name}: resolve did not answer within ${Duration.format(env.timeout)}`
            })
          )
        )
      )
      const unavailable = (message: string, reason: string) =>
        finish({
          agent: discoveryAgent(discovery),
          url: "",
          status: "service_unavailable",
          error: { message, reason: `Discovery${reason}` },
          attempts: 0
        })
      if (found._tag === "Failure") return yield* unavailable(found.failure.message, found.failure.reason)
      const endpoints = readEndpoints(found.success, isOwnService(discovery))
      if (typeof endpoints === "string") {
        return yield* unavailable(`${discovery.name}: resolve answered ${endpoints}`, "Unavailable")
      }
      // A Discovery service of the application's own may answer none (the library's never do).
      if (endpoints.length === 0 && (task.fallback ?? []).length === 0) {
        return yield* unavailable(
          `${discovery.name}: no agent for concept ${JSON.stringify(task.concept)} and intent ${JSON.stringify(task.intent)}`,
          "NotFound"
        )
      }
      listed = endpoints.map(env.fromEndpoint)
      // As the library's discoveries refuse an invalid endpoint: the registry's fault, not an invalid task's.
      for (const [i, agent] of listed.entries()) {
        if (agent.issue !== undefined) {
          const field = agent.issue.path.replace(/^agent\./, "")
          return yield* unavailable(
            `${discovery.name}: resolve answered an invalid agent [${i}].${field}: ${agent.issue.message}`,
            "Unavailable"
          )
        }
      }
    } else {
      return yield* invalid(undefined, "agent", "give an agent (or its URL), or provide a Discovery service")
    }
    for (const ref of task.fallback ?? []) listed.push(env.agentOf(ref))
    for (const agent of listed) {
      if (agent.issue !== undefined) return yield* invalid(agent, agent.issue.path, agent.issue.message)
    }
    // An agent (URL) listed twice (two registrations, a fallback that is the agent again) is asked
    // once: the second request would be a retry nobody asked for, of a task that need not be idempotent.
    // Its fragment is never sent: a URL listed again with another one, or written otherwise, is the same agent.
    // A discovered agent the task describes itself (an agent of its fallback, with its headers) is sent as described, at
    // the place discovery gave it: it went with none of its headers.
    const found = task.agent === undefined ? listed.length - (task.fallback ?? []).length : 0
    const unique = new Map<string, number>()
    for (let i = 0; i < listed.length; i++) {
      const sent = preparedOf(listed[i]!).endpoint
      const kept = unique.get(sent)
      if (kept === undefined) unique.set(sent, i)
      else if (kept < found && i >= found && typeof task.fallback![i - found] !== "string") unique.set(sent, i)
    }
    const agents = Array.from(unique.values(), (i) => listed[i]!)
    const primary = agents[0]!
    if (checkedTimeout?._tag === "Failure") return yield* invalid(primary, "timeout", checkedTimeout.failure.message)
    const timeout = checkedTimeout?.success
    if (typeof body !== "string") return yield* unsent(body, primary)
    const cacheKey = env.cache === undefined ? undefined : cacheKeyOf(task, preparedOf(primary).endpoint, dependencies)

    let last = primary
    let attempts = 0
    const steps = agents.map((agent): Step<Agent<unknown>> => {
      // The executor queues each attempt for the agent's connection slot as for a provider's
      // (`Step.slot`): the wait is its queue wait, not the agent's service time, and its breaker
      // counts no attempt cut there. An attempt begins here, under its deadline: the record names
      // the agent and counts the attempt as it did when the task waited for the slot itself.
      const slot: Slot = {
        withPermit: (effect) => {
          last = agent
          attempts++
          return env.connections.withPermit(preparedOf(agent).host)(effect)
        }
      }
      return {
        target: agent,
        name: agent.name,
        statsName: env.seriesName(agent.name),
        domain: env.statsDomain,
        timeout: timeout ?? agent.timeout ?? env.timeout,
        retry: agent.retry ?? env.retry,
        breaker: keyedBreaker(env.breaker, preparedOf(agent).breaker, () => {
          last = agent
        }),
        rateLimit: env.rateLimit,
        slot
      }
    })
    const exit = yield* Effect.exit(
      env.executor.run({ steps: steps as [Step<Agent<unknown>>, ...Array<Step<Agent<unknown>>>] }, (agent) =>
        send(agent, body, task.id)
      )
    )
    if (Exit.isSuccess(exit)) {
      const { decoded, answer } = exit.value.value
      const by = exit.value.step.target
      const base = {
        agent: by.name,
        url: preparedOf(by).shown,
        attempts,
        ...(by === primary ? {} : { fallbackUsed: true })
      }
      if (decoded._tag === "Reported") {
        return yield* finish({
          ...base,
          status: "error",
          error: { message: decoded.message, reason: "Unknown" }
        })
      }
      const result = decoded.value
      const kept = cacheKey === undefined ? undefined : wrap(by.name, task.id, answer)
      // The cache keeps last good results for an outage: one it refuses to keep fails no task.
      if (kept !== undefined) yield* Effect.ignore(env.cache!.setMany([{ key: cacheKey!, value: kept }]))
      return yield* finish({ ...base, status: "success", result })
    }
    const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
    let error: AiError =
      failure === undefined
        ? new ModelError({ reason: "Unknown", message: "the task was cut short", provider: last.name })
        : (failure.error as AiError)
    if (error._tag === "FallbackExhaustedError") error = error.last
    const base = { agent: last.name, url: preparedOf(last).shown, attempts }
    switch (error._tag) {
      case "CircuitOpenError": {
        const kept =
          cacheKey === undefined
            ? Option.none()
            : ((yield* Effect.orElseSucceed(env.cache!.getMany([cacheKey]), () => []))[0] ?? Option.none())
        const cached = Option.isSome(kept) ? yield* unwrap(kept.value, agents) : Option.none()
        return yield* finish({
          ...base,
          status: "service_unavailable",
          error: { message: error.message, reason: "CircuitOpen" },
          ...(Option.isSome(cached) ? { result: cached.value, fromCache: true } : {})
        })
      }
      case "TimeoutError":
        return yield* finish({ ...base, status: "timeout", error: { message: error.message, reason: "Timeout" } })
      case "ModelError":
        return yield* finish({
          ...base,
          status: "error",
          error: {
            message: error.message,
            reason: error.reason,
            ...(error.status === undefined ? {} : { httpStatus: error.status }),
            ...(error.field === undefined ? {} : { field: error.field })
          }
        })
      default:
        return yield* finish({
          ...base,
          status: "error",
          error: { message: error.message, reason: error._tag.replace(/Error$/, "") }
        })
    }
  })
  return call
}
