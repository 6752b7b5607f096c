/**
 * Spans on the public operations, as Effect's own packages have them, created only when the
 * caller is traced: a span costs several microseconds, more than the whole pipeline of an
 * instant call, so untraced hot loops pay nothing for tracing.
 *
 * @internal
 */
import { Context, Effect, Tracer } from "effect"

/**
 * Runs `effect` in a span named `name` when the calling fiber has a parent span; as is
 * otherwise. `attributes` is read only when the span is made.
 *
 * @internal
 */
export const traced = <A, E, R>(
  name: string,
  attributes: () => Record<string, unknown>,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) =>
    Context.getOption(fiber.context, Tracer.ParentSpan)._tag === "Some"
      ? Effect.withSpan(effect, name, { attributes: attributes() })
      : effect
  )

/**
 * {@link traced} with the attributes computed from `context` by a function made once, so a
 * hot path allocates no closure for them.
 *
 * @internal
 */
export const tracedWith = <A, E, R, C>(
  name: string,
  attributes: (context: C) => Record<string, unknown>,
  context: C,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) =>
    Context.getOption(fiber.context, Tracer.ParentSpan)._tag === "Some"
      ? Effect.withSpan(effect, name, { attributes: attributes(context) })
      : effect
  )
