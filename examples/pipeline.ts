/**
 * A research-style pipeline: `retrieve` and `recall` run side by side, `reason` waits for
 * both, `plan` for `reason`. Models are the seeded mock provider behind the executor, so
 * this runs offline:
 *
 *   npx tsx examples/pipeline.ts
 *
 * It runs the pipeline in parallel and then sequentially, and prints every step's
 * outcome, the parallelism and the pipeline as a Mermaid diagram.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect, Layer, Schedule } from "effect"
import { isRetryable } from "../src/AiError.js"
import * as Executor from "../src/Executor.js"
import * as Mock from "../src/Model/Mock.js"
import * as Pipeline from "../src/Pipeline.js"

interface Question {
  readonly question: string
}

const ask = (system: string, prompt: string) =>
  Effect.map(Executor.execute({ system, prompt, maxTokens: 200 }), (response) => response.text)

const research = Pipeline.make<Question>()
  .step(
    "retrieve",
    [],
    ({ input }) =>
      Effect.map(ask("You search a document index.", `Sources about: ${input.question}`), (text) =>
        text.split(". ").slice(0, 3)
      ),
    // a slow index must not hold the whole pipeline: after 2 s, reason without sources
    { timeout: "2 seconds", fallback: { value: [] as ReadonlyArray<string> } }
  )
  .step("recall", [], ({ input }) =>
    Effect.map(Executor.embed({ texts: [input.question] }), (response) => ({
      memories: response.vectors.length,
      dimensions: response.vectors[0]?.length ?? 0
    }))
  )
  .step(
    "reason",
    ["retrieve", "recall"],
    ({ input, deps }) =>
      ask(
        "You reason step by step.",
        `Question: ${input.question}\nSources: ${deps.retrieve.join(" | ") || "none"}\nMemories: ${deps.recall.memories}`
      ),
    // transient model failures are retried here, at the step, not around the whole pipeline
    {
      retry: Schedule.exponential("100 millis").pipe(
        Schedule.intersect(Schedule.recurs(2)),
        Schedule.whileInput(isRetryable)
      )
    }
  )
  .step("plan", ["reason"], ({ deps }) => ask("You turn conclusions into plans.", `Plan from: ${deps.reason}`))

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
  console.log(`\nplan: ${outputs.plan}`)
  console.log(`\n\`\`\`mermaid\n${Pipeline.toMermaid(research, { result: parallel })}\n\`\`\``)
})

const MockModels = Mock.layer({
  name: "mock",
  latency: { uniform: ["200 millis", "400 millis"] },
  random: { seed: 7, succeed: 1 }
})

const MainLive = Executor.layerWithStats({ timeout: "5 seconds" }).pipe(Layer.provide(MockModels))

NodeRuntime.runMain(program.pipe(Effect.provide(MainLive)))
