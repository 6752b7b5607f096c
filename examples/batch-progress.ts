/**
 * A batch of 24 questions over the three predefined domains, at most 4 calls at a time,
 * with a progress line per event, one outcome per question in input order, and the
 * batch's own stats. The provider is a seeded mock (50-250 ms, some transient failures
 * that are retried; two questions go to a slow archive and time out), so this runs offline:
 *
 *   npx tsx examples/batch-progress.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Duration, Effect, Stream } from "effect"
import { Batch, Mock, Orchestra, Stats } from "effect-orchestra"

const Provider = Mock.layer({
  name: "helpdesk-model",
  latency: { uniform: ["50 millis", "250 millis"] },
  random: { seed: 42, succeed: 0.85, fail: { Overloaded: 0.1, RateLimited: 0.05 } },
  respond: (request) => `(${request.system?.split(" ").slice(3, 5).join(" ")}) answer to "${request.prompt}"`
})

// A slow search backend behind its own domain with a 300 ms deadline: its items time out.
const Archive = Mock.layer({ name: "archive-search", latency: "2 seconds" })

// The predefined domains (support, technical, finance) retry transient failures.
const Manager = Orchestra.layer({
  providers: { main: Provider, archive: Archive },
  maxConcurrent: 4,
  extraDomains: [
    { name: "archive", provider: "archive", timeout: Duration.millis(300), system: "You search the cold archive." }
  ]
})

const domains = ["support", "technical", "finance"] as const
const items: ReadonlyArray<Batch.Item> = Array.from({ length: 24 }, (_, i) =>
  i % 10 === 9
    ? { query: `question ${i + 1}`, domain: "archive" }
    : { query: `question ${i + 1}`, domain: domains[i % 3] }
)

const bar = (done: number, total: number) => {
  const width = 24
  const filled = Math.round((done / total) * width)
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${String(done).padStart(2)}/${total}`
}

const program = Effect.gen(function* () {
  const batch = yield* Batch.Batch

  // Progress as a Stream: events while the batch runs, then its result.
  const result = yield* batch.stream(items).pipe(
    Stream.tap((event) => {
      switch (event._tag) {
        case "Started":
          return Effect.void
        case "Succeeded":
          return Console.log(`${bar(event.done, event.total)} #${event.index + 1} ok in ${event.durationMs} ms`)
        case "Failed":
          return Console.log(
            `${bar(event.done, event.total)} #${event.index + 1} ${event.status}: ${event.error?._tag}`
          )
        case "Retried":
          return Console.log(
            `${" ".repeat(32)} #${event.index + 1} retry ${event.attempt} in ${Math.round(event.delayMs)} ms`
          )
        case "Cancelled":
          return Console.log(`cancelled, never ran: ${event.notRun.join(", ")}`)
        case "Done":
          return Effect.void
      }
    }),
    Stream.runLast,
    Effect.flatMap((last) =>
      last._tag === "Some" && last.value._tag === "Done"
        ? Effect.succeed(last.value.result)
        : Effect.dieMessage("no result")
    )
  )

  yield* Console.log("\nOutcomes in input order:")
  for (const r of result.results) {
    const what = r.answer?.response.text ?? `${r.error?._tag}: ${r.error?.message}`
    yield* Console.log(`  #${String(r.index + 1).padStart(2)} ${r.status.padEnd(8)} retries ${r.retries}  ${what}`)
  }
  const ok = result.results.filter((r) => r.status === "success").length
  yield* Console.log(
    `\nbatch ${result.id} done: ${result.results.length} items, ${ok} succeeded, ${result.results.length - ok} failed, in ${result.elapsedMs} ms`
  )
  yield* Console.log(Stats.format(result.stats, `Stats of ${result.id}`))
})

program.pipe(Effect.provide(Manager), NodeRuntime.runMain)
