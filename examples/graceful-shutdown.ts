/**
 * Graceful shutdown: five calls are running when the manager's scope closes. The manager
 * stops admitting work at once (a new call fails with `ShuttingDownError`), lets the
 * running calls finish up to its 400 ms shutdown deadline, then interrupts what is left
 * (those callers get `ShuttingDownError` too) and releases the providers. Every caller
 * gets an outcome; no call is left running.
 *
 * The Promise facade's `dispose()` does the same for non-Effect code. Under
 * `NodeRuntime.runMain`, SIGINT/SIGTERM interrupt the main fiber: calls running on it (as the
 * callers here, its children) are interrupted with it at once, and only then does the scope
 * close. To give them the drain time, close the manager's scope on the interruption while they
 * run on a detached fiber (docs/orchestration.md, "Lifecycle").
 *
 *   npx tsx examples/graceful-shutdown.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Clock, Console, Context, Effect, Exit, Fiber, Layer, Scope } from "effect"
import { ModelProvider } from "effect-orchestra/Model"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Orchestra from "effect-orchestra/Orchestra"
import { Router } from "effect-orchestra/Router"

const outcomeOf = (exit: Exit.Exit<{ readonly response: { readonly text: string } }, { readonly _tag: string }>) =>
  Exit.match(exit, {
    onSuccess: (answer) => `answered: ${answer.response.text}`,
    onFailure: (cause) => {
      const error = Cause.findErrorOption(cause)
      return `failed: ${error._tag === "Some" ? error.value._tag : "interrupted"}`
    }
  })

const program = Effect.gen(function* () {
  const latencies = ["100 millis", "250 millis", "350 millis", "2 seconds"] as const
  const mock = yield* Mock.make({
    name: "model",
    script: [
      ...latencies.map((latency) => Mock.Outcome.succeed(`done after ${latency}`, { latency })),
      Mock.Outcome.hang()
    ]
  })
  const scope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    Orchestra.layer({
      providers: { main: Layer.succeed(ModelProvider, mock.provider) },
      executor: { shutdownDeadline: "400 millis", timeout: "1 minute" }
    }),
    scope
  )
  const router = Context.get(context, Router)
  const t0 = yield* Clock.currentTimeMillis
  const at = Effect.map(Clock.currentTimeMillis, (now) => `${String(now - t0).padStart(4)} ms`)

  const callers = ["A (100 ms)", "B (250 ms)", "C (350 ms)", "D (2 s)", "E (hangs)"]
  const fibers = yield* Effect.forEach(callers, (name) =>
    Effect.forkChild(
      Effect.exit(router.execute({ prompt: name }, "support")).pipe(
        Effect.tap((exit) =>
          Effect.flatMap(at, (time) => Console.log(`${time}  caller ${name.padEnd(10)} ${outcomeOf(exit)}`))
        )
      )
    )
  )

  yield* Effect.sleep("150 millis")
  yield* Console.log(`${yield* at}  closing the manager (shutdown deadline 400 ms)`)
  const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))

  yield* Effect.sleep("50 millis")
  const late = yield* Effect.exit(router.execute({ prompt: "F" }, "support"))
  yield* Console.log(`${yield* at}  caller F (arrives late) ${outcomeOf(late).replace("failed", "refused")}`)

  yield* Fiber.join(closing)
  yield* Console.log(`${yield* at}  manager closed`)
  const exits = yield* Fiber.joinAll(fibers)
  const answered = exits.filter(Exit.isSuccess).length
  yield* Console.log(
    `\nevery caller got an outcome: ${exits.length + 1} callers, ${answered} answered, ${exits.length + 1 - answered} refused or interrupted; calls still running: ${yield* mock.control.inFlight}`
  )
})

program.pipe(NodeRuntime.runMain)
