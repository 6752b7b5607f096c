/**
 * Hedged requests: when the primary has not answered after a delay, a backup call starts
 * on the next domain; the first success wins and the loser is interrupted (and counted).
 * The primary here is usually fast (40-90 ms) but one call in ten stalls for 1.5 s; the
 * backup is steady (60-100 ms). 200 questions without and with hedging at 150 ms:
 *
 *   npx tsx examples/hedging.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Clock, Console, Effect, Layer } from "effect"
import type { AiError } from "effect-orchestra/AiError"
import { ModelProvider } from "effect-orchestra/Model"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Orchestra from "effect-orchestra/Orchestra"
import { Router } from "effect-orchestra/Router"
import * as Stats from "effect-orchestra/Stats"

const percentile = (values: ReadonlyArray<number>, p: number) =>
  [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(p * values.length))] ?? 0

const timed = <A>(effect: Effect.Effect<A, AiError>) =>
  Effect.gen(function* () {
    const start = yield* Clock.currentTimeMillis
    const value = yield* effect
    return { value, ms: (yield* Clock.currentTimeMillis) - start }
  })

const program = Effect.gen(function* () {
  // One outcome per primary call, in call order: every tenth call is stuck for 1.5 s.
  const script = Array.from({ length: 400 }, (_, i) =>
    Mock.Outcome.succeed(undefined, { latency: i % 10 === 7 ? "1500 millis" : { uniform: ["40 millis", "90 millis"] } })
  )
  const primary = yield* Mock.make({ name: "primary", script })
  const backup = yield* Mock.make({ name: "backup", latency: { uniform: ["60 millis", "100 millis"] } })
  const manager = Orchestra.layer({
    providers: {
      primary: Layer.succeed(ModelProvider, primary.provider),
      backup: Layer.succeed(ModelProvider, backup.provider)
    },
    domains: [
      { name: "main", provider: "primary" },
      { name: "spare", provider: "backup" }
    ],
    breakers: false
  })

  yield* Effect.gen(function* () {
    const router = yield* Router
    const questions = Array.from({ length: 200 }, (_, i) => ({ prompt: `question ${i + 1}` }))

    const plain = yield* Effect.forEach(questions, (q) => timed(router.execute(q, "main")), { concurrency: 20 })
    const hedged = yield* Effect.forEach(
      questions,
      (q) => timed(router.hedge(q, ["main", "spare"], { after: "150 millis" })),
      { concurrency: 20 }
    )

    const cell = (label: string, value: number) => `${label} ${String(value).padStart(4)} ms`
    const row = (name: string, ms: ReadonlyArray<number>) =>
      [
        name.padEnd(22),
        cell("p50", percentile(ms, 0.5)),
        cell("p95", percentile(ms, 0.95)),
        cell("p99", percentile(ms, 0.99)),
        cell("max", Math.max(...ms))
      ].join("   ")
    yield* Console.log(
      row(
        "primary only",
        plain.map((r) => r.ms)
      )
    )
    yield* Console.log(
      row(
        "hedged after 150 ms",
        hedged.map((r) => r.ms)
      )
    )

    const won = hedged.filter((r) => r.value.hedgeWon).length
    const { hedges } = yield* Stats.snapshot()
    yield* Console.log(
      `\nbackup calls started: ${hedges.started}, backup answers used: ${won} (stats: won ${hedges.won}, lost ${hedges.lost}), primary calls interrupted: ${yield* primary.control.interrupted}`
    )
    yield* Console.log(
      `still running after the race: ${(yield* primary.control.inFlight) + (yield* backup.control.inFlight)}`
    )
  }).pipe(Effect.provide(manager))
})

program.pipe(NodeRuntime.runMain)
