/**
 * A research-style pipeline: `retrieve` and `recall` run side by side, `reason` waits for
 * both, `plan` for `reason`. Models are the seeded mock provider behind the executor, so
 * this runs offline:
 *
 *   npx tsx examples/pipeline.ts
 *
 * It runs the pipeline in parallel and then sequentially, and prints every step's outcome,
 * the parallelism, the stats of the steps that ran through the executor's policies, and
 * the pipeline as a Mermaid diagram.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as Executor from "effect-orchestra/Executor"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Pipeline from "effect-orchestra/Pipeline"
import * as Stats from "effect-orchestra/Stats"

interface Question {
  readonly question: string
}

const research = Pipeline.make<Question>()
  .step(
    "retrieve",
    [],
    ({ input }) =>
      Effect.gen(function* () {
        const executor = yield* Executor.Executor
        const response = yield* executor.execute({
          system: "You search a document index.",
          prompt: `Sources about: ${input.question}`
        })
        return response.text.split(". ").slice(0, 3)
      }),
    // a slow index must not hold the whole pipeline: after 2 s, reason without sources
    { totalTimeout: "2 seconds", fallback: { value: [] as ReadonlyArray<string> } }
  )
  .step("recall", [], ({ input }) =>
    Effect.gen(function* () {
      const executor = yield* Executor.Executor
      const response = yield* executor.embed({ texts: [input.question] }, { retry: true })
      return { memories: response.vectors.length, dimensions: response.vectors[0]?.length ?? 0 }
    })
  )
  .step(
    "reason",
    ["retrieve", "recall"],
    Pipeline.generate(({ input, deps }) => ({
      system: "You reason step by step.",
      prompt: `Question: ${input.question}\nSources: ${deps.retrieve.join(" | ") || "none"}\nMemories: ${deps.recall.memories}`
    })),
    // transient model failures are retried here, at the step, on the executor's policy
    { retry: true, timeout: "3 seconds" }
  )
  .step(
    "plan",
    ["reason"],
    Pipeline.generate(({ deps }) => ({
      system: "You turn conclusions into plans.",
      prompt: `Plan from: ${deps.reason.text}`
    })),
    { retry: true }
  )

const show = (label: string, result: Pipeline.Result<Pipeline.Outputs<typeof research>, unknown>) => {
  console.log(`\n== ${label}: ${result.status} in ${result.wallMs} ms (${result.strategy})`)
  for (const name of research.names) {
    const outcome = result.steps[name]
    const timing =
      outcome.status === "skipped"
        ? ""
        : ` ${outcome.startedAt - result.startedAt}..${outcome.endedAt - result.startedAt} ms`
    console.log(`  ${name.padEnd(9)}${timing.padEnd(18)} ${Pipeline.describeOutcome(outcome)}`)
  }
  console.log(
    `  parallelism ${result.parallelism.toFixed(2)} (sum of step times ${result.busyMs} ms / wall ${result.wallMs} ms; critical path ${result.criticalPathMs} ms)`
  )
}

const program = Effect.gen(function* () {
  const input = { question: "Why do fibers beat thread pools for I/O-bound model calls?" }
  const parallel = yield* Pipeline.run(research, input)
  show("parallel", parallel)
  const sequential = yield* Pipeline.run(research, input, { mode: "sequential" })
  show("sequential", sequential)

  const outputs = yield* Pipeline.outputs(parallel)
  console.log(`\nplan: ${outputs.plan.text}`)
  // Steps with policies are counted under their own name, domain "pipeline".
  const reason = yield* Stats.snapshot({ provider: "reason", domain: "pipeline" })
  console.log(
    `\nstep "reason" over both runs: ${reason.total} runs, p50 ${reason.latency.p50} ms, ${reason.retries} retries`
  )
  console.log(`\n\`\`\`mermaid\n${Pipeline.toMermaid(research, { result: parallel })}\n\`\`\``)
})

const MockModels = Mock.layer({
  name: "mock",
  latency: { uniform: ["200 millis", "400 millis"] },
  seed: 7,
  random: { success: 0.9, failures: { Overloaded: 1 } }
})

const MainLive = Executor.layerWithStats({ timeout: "5 seconds" }).pipe(Layer.provide(MockModels))

NodeRuntime.runMain(program.pipe(Effect.provide(MainLive)))
