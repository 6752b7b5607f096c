/**
 * A batch's `ExecutionStats`, computed from its own item outcomes when it ends: the cost
 * depends on the batch's size only, never on how many batches ran before it.
 *
 * @internal
 */
import { reasonOf } from "../AiError.js"
import type { ItemResult } from "../Batch.js"
import type { ExecutionStats, LatencyStats } from "../Stats.js"
import { perSecond, round, successRate } from "../stats/figures.js"
import { tokenCount } from "../stats/series.js"

// A new one each time: one shared by every result was changed for every later batch by a caller changing one.
const zero = (): LatencyStats => ({ avg: 0, min: 0, max: 0, p50: 0, p95: 0, p99: 0 })

/** Nearest-rank percentiles of the values (sorted in place). */
export const latencyOf = (values: Float64Array): LatencyStats => {
  const n = values.length
  if (n === 0) return zero()
  values.sort()
  let sum = 0
  for (let i = 0; i < n; i++) sum += values[i]!
  const at = (q: number) => values[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]!
  return {
    avg: round(sum / n),
    min: round(values[0]!),
    max: round(values[n - 1]!),
    p50: round(at(0.5)),
    p95: round(at(0.95)),
    p99: round(at(0.99))
  }
}

/** What the runner measured besides the outcomes. */
export interface Measured {
  readonly elapsedMs: number
  /** Most items of the batch running at once. */
  readonly peak: number
  /** Per item: how long it waited for a permit of the shared limit (NaN: it never got one). */
  readonly waits: ReadonlyArray<number>
  /** The items' fallbacks and hedges, told by their calls as they ended (none: no item had several steps). */
  readonly steps?: Steps | undefined
}

/** What the calls of a batch's items told of their steps when they ended. */
export interface Steps {
  /** Steps started after the first because the one before failed. */
  readonly fallbacks: number
  /** Steps started because the hedge delay passed with the one before still running. */
  readonly hedges: number
  /** Calls a hedge answered. */
  readonly hedgesWon: number
}

/**
 * | field | from |
 * |---|---|
 * | `total` | items that ran or were refused (not the ones that never started) |
 * | `successes`, `failures`, `failuresByReason` | item outcomes; an item cancelled while running counts as `Interrupted` |
 * | `staleAnswers` | items answered from an expired cache entry (in `successes` too; batch items do not ask for one today) |
 * | `latency` | item durations (retries, fallbacks and queueing for the provider included) |
 * | `queueWait` | items waiting for a permit of the manager's shared limit |
 * | `concurrencyPeak` | most items of this batch running at once |
 * | `timeouts` | items that ended with a deadline: status `timeout` (a `TimeoutError`, or a fallback chain exhausted with one as its last step's error) |
 * | `retries` | retries of the batch's items |
 * | `fallbacks` | hand-overs to a next domain after a failure, of every item that ran (answered, failed or cancelled), as `orchestra_fallbacks_total` counts them; not the hedges |
 * | `hedges` | domains started because the hedge delay passed with the one before still running (not after its failure), of every item that ran (answered, failed or cancelled): `won` when one of them answered, else `lost`, as `orchestra_hedges_total` counts them when the call ends |
 * | `tokens` | usage of the answers that came from a provider |
 * | `serviceTime`, `timeToFirstToken` | not known per batch: zeros (see `Stats` per provider) |
 * | `ignoredDurations` | item durations and waits left out of `latency` and `queueWait` for being no finite number (a clock's bogus reading); a negative one (a wall clock set back) counts as 0, as in a `Stats` window |
 */
export const statsOf = (results: ReadonlyArray<ItemResult>, measured: Measured): ExecutionStats => {
  let total = 0
  let successes = 0
  let staleAnswers = 0
  let failures = 0
  let timeouts = 0
  let retries = 0
  let inputTokens = 0
  let outputTokens = 0
  let timed = 0
  let waited = 0
  let ignored = 0
  const byReason: Record<string, number> = {}
  const durations = new Float64Array(results.length)
  const waits = new Float64Array(results.length)
  for (const result of results) {
    // Refused by a closing manager, an item did not run but has its outcome: only one that never started is left out.
    if (!result.ran && result.status === "cancelled") continue
    total++
    retries += result.retries
    const wait = measured.waits[result.index]!
    // NaN: it never got a permit. As a window's histograms: no finite number is left out (counted), a negative one is 0.
    if (Number.isFinite(wait)) waits[waited++] = Math.max(wait, 0)
    else if (!Number.isNaN(wait)) ignored++
    const answer = result.answer
    if (answer !== undefined) {
      successes++
      if (answer.source === "stale-cache") staleAnswers++
      if (Number.isFinite(result.durationMs)) durations[timed++] = Math.max(result.durationMs, 0)
      else ignored++
      const usage = answer.source === "provider" ? answer.response.usage : undefined
      if (usage !== undefined) {
        inputTokens += tokenCount(usage.inputTokens)
        outputTokens += tokenCount(usage.outputTokens)
      }
      continue
    }
    failures++
    const error = result.error
    const reason = error === undefined ? "Interrupted" : reasonOf(error)
    byReason[reason] = (byReason[reason] ?? 0) + 1
    if (error === undefined) continue
    if (Number.isFinite(result.durationMs)) durations[timed++] = Math.max(result.durationMs, 0)
    else ignored++
    // As the item's status says: an exhausted chain ends as its last step did (the executor
    // counts that step's attempt in its own `timeouts` too).
    if (result.status === "timeout") timeouts++
  }
  const steps = measured.steps
  const hedgesStarted = steps?.hedges ?? 0
  const hedgesWon = steps?.hedgesWon ?? 0
  const finished = successes + failures
  const elapsed = measured.elapsedMs
  return {
    total,
    successes,
    failures,
    failuresByReason: byReason,
    successRate: successRate(successes, finished),
    staleAnswers,
    latency: latencyOf(durations.subarray(0, timed)),
    serviceTime: zero(),
    queueWait: latencyOf(waits.subarray(0, waited)),
    timeToFirstToken: zero(),
    concurrencyPeak: measured.peak,
    inFlight: 0,
    queued: 0,
    timeouts,
    retries,
    fallbacks: steps?.fallbacks ?? 0,
    hedges: { started: hedgesStarted, won: hedgesWon, lost: hedgesStarted - hedgesWon },
    tokens: { input: inputTokens, output: outputTokens },
    throughput: perSecond(finished, elapsed),
    windowMs: elapsed,
    ignoredDurations: ignored
  }
}
