/**
 * HTTP agents end to end, offline: starts six small agents on 127.0.0.1 (port 0) with
 * `@effect/platform-node`'s HTTP server, dispatches a batch of tasks with dependencies
 * (one of them found by discovery from its concept and intent), prints one status record
 * per task and the figures of one agent, and shuts everything down.
 *
 *   npx tsx examples/http-agents.ts
 */
import * as http from "node:http"
import { NodeHttpClient, NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Deferred, Effect, Layer } from "effect"
import { HttpServerRequest, HttpServerResponse } from "effect/http"
import * as CircuitBreaker from "effect-orchestra/CircuitBreaker"
import * as Discovery from "effect-orchestra/Discovery"
import * as Executor from "effect-orchestra/Executor"
import * as HttpAgent from "effect-orchestra/HttpAgent"
import * as Mock from "effect-orchestra/Model/Mock"

/** Serves `answer` on a fresh loopback port for the current scope; returns the agent's URL. */
const startAgent = (answer: (task: HttpAgent.TaskBody) => Effect.Effect<HttpServerResponse.HttpServerResponse>) =>
  Effect.gen(function* () {
    const nodeServer = http.createServer()
    const server = yield* NodeHttpServer.make(() => nodeServer, { port: 0, host: "127.0.0.1" })
    // runs before the server's own close, which would otherwise wait for kept-alive connections
    yield* Effect.addFinalizer(() => Effect.sync(() => nodeServer.closeAllConnections()))
    yield* server.serve(
      HttpServerRequest.schemaBodyJson(HttpAgent.TaskBody).pipe(
        Effect.flatMap(answer),
        Effect.catch(() => Effect.succeed(HttpServerResponse.text("bad task", { status: 400 })))
      )
    )
    const port = "port" in server.address ? server.address.port : 0
    return `http://127.0.0.1:${port}/task`
  })

const ok = (task: HttpAgent.TaskBody, result: unknown) =>
  HttpServerResponse.jsonUnsafe({ task_id: task.task_id, status: "success", result })

const program = Effect.gen(function* () {
  const search = yield* startAgent((task) =>
    Effect.as(Effect.sleep("150 millis"), ok(task, [`${task.concept}: survey`, `${task.concept}: benchmark`]))
  )
  const memory = yield* startAgent((task) =>
    Effect.as(Effect.sleep("100 millis"), ok(task, [`we tried ${task.concept} in 2023`]))
  )
  const writer = yield* startAgent((task) =>
    Effect.as(Effect.sleep("80 millis"), ok(task, `summary of ${Object.keys(task.dependencies ?? {}).join(" + ")}`))
  )
  const flaky = yield* startAgent(() => Effect.succeed(HttpServerResponse.text("overloaded", { status: 503 })))
  // hangs until the example shuts down
  const released = yield* Deferred.make<void>()
  const stuck = yield* startAgent(() =>
    Effect.as(Deferred.await(released), HttpServerResponse.text("late", { status: 503 }))
  )
  // added after its server, so it runs first: the server's close waits for the handler
  yield* Effect.addFinalizer(() => Deferred.succeed(released, undefined))
  const sloppy = yield* startAgent((task) => Effect.succeed(HttpServerResponse.jsonUnsafe({ task_id: task.task_id })))

  const named = (url: string, name: string) => HttpAgent.agent({ url, name })
  const task = (id: string, agent: HttpAgent.Agent, extra: Partial<HttpAgent.Task> = {}): HttpAgent.Task => ({
    id,
    agent,
    intent: "research",
    concept: "effect fibers",
    args: { depth: 2 },
    ...extra
  })
  const flakyAgent = named(flaky, "flaky")

  // Tasks that name no agent are resolved by (concept, intent).
  const discovery = Discovery.layerStatic([
    { concept: "effect fibers", intent: "translate", agents: { url: writer, name: "writer" } }
  ])

  const records = yield* Effect.gen(function* () {
    const agents = yield* HttpAgent.HttpAgents
    const batch = yield* agents.dispatch([
      task("find", named(search, "search")),
      task("remember", named(memory, "memory")),
      task("write", named(writer, "writer"), { dependsOn: ["find", "remember"] }),
      task("rank-1", flakyAgent),
      task("rank-2", flakyAgent),
      task("rank-3", flakyAgent, { dependsOn: ["rank-1"] }),
      task("wait", named(stuck, "stuck"), { timeout: "300 millis" }),
      task("format", named(sloppy, "sloppy")),
      { id: "translate", intent: "translate", concept: "effect fibers", dependsOn: ["write"] }
    ])
    // the flaky agent's breaker (failMax 2) is open now: refused at once, no request
    const afterTrip = yield* agents.call(task("rank-4", flakyAgent))
    const flakyStats = yield* agents.stats(flakyAgent)
    return { all: [...batch, afterTrip], flakyStats }
  }).pipe(Effect.provide(HttpAgent.layer({ timeout: "5 seconds" }).pipe(Layer.provide(discovery))))

  console.log("task       agent    status                ms  detail")
  for (const r of records.all) {
    const detail = r.status === "success" ? JSON.stringify(r.result) : (r.error?.message ?? "")
    console.log(
      `${r.taskId.padEnd(10)} ${r.agent.padEnd(8)} ${r.status.padEnd(19)} ${String(r.durationMs).padStart(4)}  ${detail}`
    )
  }
  const s = records.flakyStats
  console.log(
    `\nflaky: ${s.tasks} tasks ${JSON.stringify(s.statuses)}; its calls: ${s.calls.total}, success rate ${s.successRate} %, failures ${JSON.stringify(s.calls.failuresByReason)}`
  )
})

const MainLive = Executor.layerWithStats().pipe(
  Layer.provideMerge(Mock.layer()),
  Layer.provideMerge(CircuitBreaker.layerMemory({ failMax: 2, resetTimeout: "30 seconds" })),
  Layer.provideMerge(NodeHttpClient.layerUndici)
)

NodeRuntime.runMain(program.pipe(Effect.scoped, Effect.provide(MainLive)))
