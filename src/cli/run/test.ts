/**
 * The handler of `orchestra test`: one call on the default provider, a domain, or a
 * fallback chain; the answer, its latency and where it came from.
 *
 * @since 0.2.0
 */
import { Clock, Effect, Option, Result } from "effect"
import type { AiError } from "../../AiError.js"
import type { Executor } from "../../Executor.js"
import type { GenerateRequest } from "../../Model.js"
import type { Answer, Router } from "../../Router.js"
import {
  type Common,
  errorJson,
  errorText,
  ExitCode,
  exitCodes,
  failWith,
  fallbackOf,
  formatMs,
  printError,
  printJson,
  printText
} from "../Common.js"
import { checkDomains, checkSplitFlags, library, prepare, provideOrchestra } from "../Manager.js"
import { maxTokensOf } from "../Prompts.js"
import type { Args } from "../Test.js"

/**
 * What `test --json` prints.
 *
 * @since 0.1.0
 * @category models
 */
export interface TestOutput {
  readonly ok: boolean
  readonly prompt: string
  readonly answer?: string | undefined
  readonly latencyMs: number
  readonly domain: string | null
  readonly provider?: string | undefined
  readonly model?: string | undefined
  /** Domains tried, the answering one included. */
  readonly attempts?: number | undefined
  /** Retries of the same domain (across all domains tried). */
  readonly retries: number
  readonly fallbackUsed?: boolean | undefined
  readonly source?: string | undefined
  readonly finishReason?: string | undefined
  readonly usage?: unknown
  readonly error?: Record<string, unknown> | undefined
}

/**
 * One call: on the default provider (no domain, the executor's retry policy), one domain
 * (and its own fallback chain), then the `fallback` domains in order. Without a domain the
 * default provider is still the first step: the fallbacks come after it, as for a batch
 * item that names no domain. Each domain is tried once, however often it is listed.
 *
 * @since 0.1.0
 * @category utils
 */
export const callChain = (
  router: Router["Service"],
  executor: Executor["Service"],
  request: GenerateRequest,
  domain: string | undefined,
  fallback: ReadonlyArray<string>,
  onRetry: () => Effect.Effect<void>
): Effect.Effect<Answer, AiError> => {
  if (domain !== undefined) {
    if (fallback.length === 0) return router.execute(request, domain, { onRetry })
    // A list is the whole chain: the domain's own fallbacks first, then --fallback's, once each (as a batch's).
    return Effect.flatMap(router.chain(domain), (chain) =>
      router.executeWithFallback(request, [...new Set([...chain.map((d) => d.name), ...fallback])], { onRetry })
    )
  }
  if (fallback.length === 0) {
    return Effect.map(
      executor.execute(request, { retry: true, onRetry }),
      (response): Answer => ({
        response,
        domain: "",
        provider: response.provider,
        attempts: 1,
        domainsTried: 1,
        fallbackUsed: false,
        source: "provider"
      })
    )
  }
  return executor.resolve({ retry: true }).pipe(
    Effect.flatMap((defaults) =>
      // Once each, as with a domain: a domain listed twice would be called twice.
      router.plan(request, [...new Set(fallback)], {
        lead: executor.stepFor(executor.provider, {
          retry: defaults.retry ?? false,
          timeout: defaults.timeout ?? "none"
        }),
        onRetry
      })
    ),
    Effect.flatMap((routed) => Effect.map(executor.run(routed.plan, routed.call), routed.answer))
  )
}

const report = (common: Common, out: TestOutput, failure: AiError | undefined): Effect.Effect<void, ExitCode> =>
  Effect.gen(function* () {
    // A failure is said on stderr with or without --json, as `failWith` says the others: stdout holds the data.
    if (failure !== undefined) {
      yield* printError(`orchestra: the call failed after ${formatMs(out.latencyMs)}: ${errorText(failure)}`)
    }
    if (common.json) yield* printJson(common, out)
    if (failure !== undefined) return yield* new ExitCode({ code: exitCodes.failed })
    if (common.json) return
    const retries = `${out.retries} retr${out.retries === 1 ? "y" : "ies"}`
    const rows: ReadonlyArray<readonly [string, string]> = [
      ["latency", formatMs(out.latencyMs)],
      ["domain", out.domain ?? "(none: default provider)"],
      ["provider", `${out.provider} (model ${out.model})`],
      ["attempts", `${out.attempts} domain${out.attempts === 1 ? "" : "s"}, ${retries}`],
      ["fallback", out.fallbackUsed === true ? "used" : "not used"],
      ["source", out.source ?? "provider"],
      ["finish", String(out.finishReason)]
    ]
    yield* printText([(out.answer ?? "").trim(), "", ...rows.map(([k, v]) => `${k.padEnd(9)} ${v}`)].join("\n"))
  })

/**
 * @since 0.2.0
 * @category handlers
 */
export const run = Effect.fnUntraced(function* (args: Args) {
  const common: Common = { json: args.json, config: args.config }
  const maxTokens = yield* maxTokensOf(common, args.maxTokens)
  const prompt = args.prompt.trim()
  if (prompt.length === 0) {
    return yield* failWith(common, exitCodes.usage, "--prompt is empty: give the question to send", { kind: "usage" })
  }
  const domain = Option.getOrUndefined(args.domain)
  const fallback = yield* fallbackOf(common, args.fallback)
  const checked = yield* prepare(common)
  yield* checkSplitFlags(common, checked, args)
  yield* checkDomains(common, checked, [...Option.toArray(args.domain), ...fallback])
  const services = yield* library
  const program = Effect.gen(function* () {
    const router = yield* services.Router
    const executor = yield* services.Executor
    const request: GenerateRequest = maxTokens === undefined ? { prompt } : { prompt, maxTokens }
    let retries = 0
    const call = callChain(router, executor, request, domain, fallback, () => Effect.sync(() => void retries++))
    const start = yield* Clock.currentTimeMillis
    const result = yield* Effect.result(call)
    const latencyMs = (yield* Clock.currentTimeMillis) - start
    const out: TestOutput = Result.match(result, {
      onFailure: (error) => ({
        ok: false,
        prompt,
        latencyMs,
        domain: domain ?? null,
        retries,
        error: errorJson(error)
      }),
      onSuccess: (answer) => ({
        ok: true,
        prompt,
        answer: answer.response.text,
        latencyMs,
        // Without --domain, the default provider answers under no domain; a fallback names its own.
        domain: domain === undefined && !answer.fallbackUsed ? null : answer.domain,
        provider: answer.provider,
        model: answer.response.model,
        attempts: answer.domainsTried,
        retries,
        fallbackUsed: answer.fallbackUsed,
        source: answer.source,
        finishReason: answer.response.finishReason,
        usage: answer.response.usage
      })
    })
    yield* report(common, out, Result.isFailure(result) ? result.failure : undefined)
  })
  yield* program.pipe(provideOrchestra(common, checked))
})
