/**
 * Spans on the public operations, as Effect's own packages have them, created only when the
 * caller is traced: a span costs several microseconds, more than the whole pipeline of an
 * instant call, so untraced hot loops pay nothing for tracing.
 *
 * @internal
 */
import { Cause, type Clock, Context, Effect, Exit, type Fiber, References, Stream, Tracer } from "effect"
import { type AiError, reasonOf } from "../AiError.js"

/**
 * Whether a span made on `fiber` would reach anyone: the fiber is in a span, tracing is
 * enabled, and the tracer is one the application provided. Effect's default tracer keeps
 * spans in memory only (every `Effect.fn` makes one), so a caller inside an `Effect.fn`
 * with no tracer provided is untraced here: its calls take the fused path
 * (`policy/fused.ts`) and make no span per attempt.
 *
 * @internal
 */
export const isTraced = (fiber: Fiber.Fiber<unknown, unknown>): boolean =>
  reachesTracer(fiber) && Context.getOption(fiber.context, Tracer.ParentSpan)._tag === "Some"

/**
 * Whether a span made on `fiber` reaches a tracer: tracing is on and the tracer is one the
 * application provided. Unlike {@link isTraced}, a root span counts (the providers' calls
 * outside any span still get theirs).
 *
 * @internal
 */
export const reachesTracer = (fiber: Fiber.Fiber<unknown, unknown>): boolean =>
  fiber.getRef(Tracer.Tracer) !== Tracer.nativeTracer && fiber.getRef(References.TracerEnabled)

/**
 * Runs `effect` in a span named `name` when the calling fiber is traced ({@link isTraced});
 * as is otherwise. `attributes` is read only when the span is made.
 *
 * @internal
 */
export const traced = <A, E, R>(
  name: string,
  attributes: () => Record<string, unknown>,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => (isTraced(fiber) ? Effect.withSpan(effect, name, { attributes: attributes() }) : effect))

/**
 * `stream` in a span named `name` covering the whole stream when a span would reach a tracer
 * ({@link reachesTracer}); as is otherwise. `Stream.withSpan` alone makes a span, captures a
 * stack and builds its bracket (two generator functions of effect's own) for every stream,
 * traced or not.
 *
 * @internal
 */
export const tracedStream = <A, E, R>(
  name: string,
  stream: Stream.Stream<A, E, R>,
  attributes?: Record<string, unknown>
): Stream.Stream<A, E, R> =>
  Stream.unwrap(
    Effect.withFiber((fiber) =>
      Effect.succeed(
        reachesTracer(fiber) ? Stream.withSpan(stream, name, attributes === undefined ? {} : { attributes }) : stream
      )
    )
  )

/**
 * The `error.type` of a failed exit (its error's reason), or undefined: a success, an
 * interruption or a defect.
 *
 * @internal
 */
export const errorTypeOf = (exit: Exit.Exit<unknown, AiError>): string | undefined => {
  if (Exit.isSuccess(exit)) return undefined
  const error = Cause.findErrorOption(exit.cause)
  return error._tag === "Some" ? reasonOf(error.value) : undefined
}

/**
 * Ends a span made by hand (one whose end is not an effect's: a stream's, an answer's
 * body) with `exit`, a failure with its `error.type`; a span already ended is left as is.
 *
 * @internal
 */
export const endSpan = (span: Tracer.Span, clock: Clock.Clock, exit: Exit.Exit<unknown, AiError>): void => {
  if (span.status._tag === "Ended") return
  const errorType = errorTypeOf(exit)
  if (errorType !== undefined) span.attribute("error.type", errorType)
  span.end(clock.currentTimeNanosUnsafe(), exit)
}

/**
 * The `gen_ai.*` attributes of an answer: a response, an embedding, a stream's `Finish`.
 *
 * @internal
 */
export const answerAttributes = (answer: {
  readonly model: string
  readonly finishReason?: string | undefined
  readonly usage?: { readonly inputTokens: number; readonly outputTokens: number } | undefined
}): Record<string, unknown> => ({
  "gen_ai.response.model": answer.model,
  ...(answer.finishReason === undefined ? {} : { "gen_ai.response.finish_reasons": [answer.finishReason] }),
  ...(answer.usage === undefined
    ? {}
    : {
        "gen_ai.usage.input_tokens": answer.usage.inputTokens,
        "gen_ai.usage.output_tokens": answer.usage.outputTokens
      })
})
