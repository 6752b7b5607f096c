/**
 * HTTP agents end to end, offline: starts five small agents on 127.0.0.1 (port 0) with
 * `@effect/platform-node`'s HTTP server, dispatches a batch of tasks with dependencies,
 * prints one status record per task, and shuts everything down.
 *
 *   npx tsx examples/http-agents.ts
 */
import * as http from "node:http"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Deferred, Effect, Layer } from "effect"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as HttpAgent from "../src/HttpAgent.js"

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
        Effect.catchAll(() => HttpServerResponse.text("bad task", { status: 400 }))
      )
    )
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    return `http://127.0.0.1:${port}/task`
  })

const ok = (task: HttpAgent.TaskBody, result: unknown) =>
  HttpServerResponse.json({ task_id: task.task_id, status: "success", result }).pipe(Effect.orDie)

const program = Effect.gen(function* () {
  const search = yield* startAgent((task) =>
    Effect.zipRight(Effect.sleep("150 millis"), ok(task, [`${task.concept}: survey`, `${task.concept}: benchmark`]))
  )
  const memory = yield* startAgent((task) =>
    Effect.zipRight(Effect.sleep("100 millis"), ok(task, [`we tried ${task.concept} in 2023`]))
  )
  const writer = yield* startAgent((task) =>
    Effect.zipRight(
      Effect.sleep("80 millis"),
      ok(task, `summary of ${Object.keys(task.dependencies ?? {}).join(" + ")}`)
    )
  )
  const flaky = yield* startAgent(() => HttpServerResponse.text("overloaded", { status: 503 }))
  // hangs until the example shuts down (a bare Effect.never would outlive the server:
  // @effect/platform's server did not interrupt the handler when the client gave up)
  const released = yield* Deferred.make<void>()
  yield* Effect.addFinalizer(() => Deferred.succeed(released, undefined))
  const stuck = yield* startAgent(() =>
    Effect.zipRight(Deferred.await(released), HttpServerResponse.text("too late", { status: 503 }))
  )
  const sloppy = yield* startAgent((task) =>
    HttpServerResponse.json({ task_id: task.task_id, status: "success" }).pipe(Effect.orDie)
  )

  const task = (id: string, agent: string, extra: Partial<HttpAgent.Task> = {}): HttpAgent.Task => ({
    id,
    agent: HttpAgent.agent({ url: agent, name: nameOf.get(agent) ?? agent }),
    intent: "research",
    concept: "effect fibers",
    args: { depth: 2 },
    ...extra
  })
  const nameOf = new Map([
    [search, "search"],
    [memory, "memory"],
    [writer, "writer"],
    [flaky, "flaky"],
    [stuck, "stuck"],
    [sloppy, "sloppy"]
  ])

  const records = yield* HttpAgent.dispatch([
    task("find", search),
    task("remember", memory),
    task("write", writer, { dependsOn: ["find", "remember"] }),
    task("rank-1", flaky),
    task("rank-2", flaky),
    task("rank-3", flaky, { dependsOn: ["rank-1"] }),
    task("wait", stuck, { timeout: "300 millis" }),
    task("format", sloppy)
  ])
  // the flaky agent's breaker (failMax 2) is open now
  const afterTrip = yield* HttpAgent.call(task("rank-4", flaky))

  console.log("task      agent   status               ms  detail")
  for (const r of [...records, afterTrip]) {
    const detail = r.status === "success" ? JSON.stringify(r.result) : (r.error?.message ?? "")
    console.log(
      `${r.taskId.padEnd(9)} ${r.agent.padEnd(7)} ${r.status.padEnd(19)} ${String(r.durationMs).padStart(4)}  ${detail}`
    )
  }
  const connections = yield* Effect.flatMap(HttpAgent.HttpAgents, (agents) => agents.connections)
  console.log(`\npeak requests in flight: ${connections.peak}; now ${connections.active}`)
})

const AgentsLive = HttpAgent.layer({ maxConnections: 100, maxConnectionsPerHost: 10, timeout: "5 seconds" }).pipe(
  Layer.provide(NodeHttpClient.layerUndici),
  Layer.provide(CircuitBreaker.layer({ failMax: 2, resetTimeout: "30 seconds" }))
)

NodeRuntime.runMain(program.pipe(Effect.scoped, Effect.provide(AgentsLive)))
