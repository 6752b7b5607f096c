/**
 * Turning a provider's stream of chunks (SSE events, NDJSON values) into `StreamPart`s:
 * exactly one `Finish` per successful stream, or a typed failure; an idle deadline of the
 * stream's own; tool calls streamed as deltas assembled into one `ToolCall` part each.
 *
 * ```ts
 * Assemble.assemble(client.sse(request, ctx), {
 *   ctx,
 *   idleTimeout: client.settings.streamIdleTimeout,
 *   step: (event) => ..., // parts of one chunk; may fail with an error sent mid-stream
 *   onEnd: () => ... // the body ended without a Finish: a Finish from what was seen, or a failure
 * })
 * ```
 *
 * @since 0.2.0
 */
import type { Array as Arr } from "effect"
import { Cause, Duration, Effect, Fiber, Pull, Stream } from "effect"
import type { AiError, ModelError, TimeoutError } from "../../AiError.js"
import * as Model from "../../Model.js"
import { type CallContext, endedEarly, idleTimeout, malformed } from "./errors.js"

/**
 * Options of {@link assemble}.
 *
 * @since 0.2.0
 * @category models
 */
export interface AssembleOptions<C, E extends AiError = ModelError> {
  readonly ctx: CallContext
  /** Longest wait for the next chunk, the first one included. */
  readonly idleTimeout: Duration.Duration
  /** The parts of one chunk. Fails with an error the provider sent mid-stream (after the text before it). */
  readonly step: (chunk: C) => Effect.Effect<ReadonlyArray<Model.StreamPart>, E>
  /**
   * Called when the chunks end before any `Finish`: the parts that end the stream (a
   * `Finish` built from what was seen), or the failure of a stream that broke off. When it
   * gives no `Finish`, the stream fails as ended early.
   */
  readonly onEnd: () => Effect.Effect<ReadonlyArray<Model.StreamPart>, E>
  /**
   * The answer is complete but for trailing chunks (a usage chunk, a terminator): once it
   * says so, the stream waits at most `wait` for the next chunk, then ends as if the body
   * had ended (`onEnd`), as it does when the connection is then cut (`Transport`). Asked once per read.
   *
   * @since 0.3.0
   */
  readonly settled?: { readonly done: () => boolean; readonly wait: Duration.Duration } | undefined
}

/**
 * How long a stream whose answer is whole (its finish reason seen) waits for trailing chunks
 * (a usage chunk, a terminator) before it ends as finished: 2 seconds, or half the idle
 * deadline when that is shorter, so that a short deadline still ends a settled stream as finished.
 * Computed once per provider, for {@link AssembleOptions.settled}.
 *
 * @since 0.3.0
 * @category constructors
 */
export const settledWait = (idleTimeout: Duration.Duration): Duration.Duration =>
  Duration.min(Duration.seconds(2), Duration.millis(Duration.toMillis(idleTimeout) / 2))

const isTransport = (error: AiError): boolean => error._tag === "ModelError" && error.reason === "Transport"

/**
 * The `StreamPart`s of a stream of chunks. It ends at the first `Finish` (nothing upstream
 * is read after it, and its connection is released), fails as ended early when no `Finish`
 * comes, and fails with a `TimeoutError` (limit `idle`, the text delivered so far as
 * `partialText`) when a chunk takes longer than `idleTimeout`.
 *
 * @since 0.2.0
 * @category streaming
 */
export const assemble = <C, E extends AiError = ModelError>(
  chunks: Stream.Stream<C, E>,
  options: AssembleOptions<C, E>
): Stream.Stream<Model.StreamPart, E | ModelError | TimeoutError> =>
  Stream.suspend(() => {
    let delivered = ""
    // A reader that bounds the wait between chunks at least as strictly (the executor) makes
    // our own timer redundant, and `Stream.timeoutOrElse` reads the chunks on a second fiber.
    const outer = Fiber.getCurrent()?.getRef(Model.ChunkDeadline)
    const timed =
      outer !== undefined && outer <= Duration.toMillis(options.idleTimeout)
        ? chunks
        : Stream.timeoutOrElse(chunks, {
            duration: options.idleTimeout,
            orElse: () => Stream.fail(idleTimeout(options.ctx, options.idleTimeout, delivered))
          })
    // Whole reads at a time: a Stream stage per part costs several times the parsing itself.
    return Stream.transformPull(timed, (upstream) =>
      Effect.sync(() => {
        let finished = false
        let ended = false
        let failure: E | ModelError | undefined
        const take = (parts: ReadonlyArray<Model.StreamPart>, out: Array<Model.StreamPart>): void => {
          for (const part of parts) {
            if (finished) return
            out.push(part)
            if (part._tag === "TextDelta") delivered += part.text
            else if (part._tag === "Finish") finished = true
          }
        }
        // The parts of the chunks before a failing one are delivered first; the failure comes with the next pull.
        const steps = (chunks: ReadonlyArray<C>): Effect.Effect<Array<Model.StreamPart>> => {
          const out: Array<Model.StreamPart> = []
          return Effect.as(
            Effect.forEach(
              chunks,
              (chunk) =>
                finished || failure !== undefined
                  ? Effect.void
                  : Effect.matchEffect(options.step(chunk), {
                      onSuccess: (parts) => Effect.sync(() => take(parts, out)),
                      onFailure: (error) =>
                        Effect.sync(() => {
                          failure = error
                        })
                    }),
              { discard: true }
            ),
            out
          )
        }
        const end: Effect.Effect<Array<Model.StreamPart>> = Effect.suspend(() => {
          ended = true
          return Effect.matchEffect(Effect.suspend(options.onEnd), {
            onSuccess: (parts) => {
              const out: Array<Model.StreamPart> = []
              take(parts, out)
              if (!finished) failure = endedEarly(options.ctx)
              return Effect.succeed(out)
            },
            onFailure: (error) => {
              failure = error
              return Effect.succeed([])
            }
          })
        })
        const emit = (out: Array<Model.StreamPart>) =>
          out.length > 0 ? Effect.succeed(out as unknown as Arr.NonEmptyReadonlyArray<Model.StreamPart>) : pull
        const next = Pull.catchDone(upstream, () => Effect.succeed(undefined))
        const settled = options.settled
        // Once the answer is whole, a connection cut before its trailing chunks ends it as the body's end would.
        const nextSettled =
          settled === undefined
            ? next
            : Effect.catchIf(
                Effect.timeoutOrElse(next, { duration: settled.wait, orElse: () => Effect.succeed(undefined) }),
                isTransport,
                () => Effect.succeed(undefined)
              )
        const pull: Pull.Pull<
          Arr.NonEmptyReadonlyArray<Model.StreamPart>,
          E | ModelError | TimeoutError
        > = Effect.suspend(() => {
          if (failure !== undefined) return Effect.fail(failure)
          if (finished || ended) return Cause.done()
          return Effect.flatMap(settled?.done() ? nextSettled : next, (chunks) =>
            Effect.flatMap(chunks === undefined ? end : steps(chunks), emit)
          )
        })
        return pull
      })
    )
  })

/**
 * One fragment of a tool call streamed as deltas (OpenAI's `delta.tool_calls[]`): the first
 * fragment of a call carries its id and name, the next ones pieces of its arguments (a name
 * repeated whole in a later fragment counts once). A new id with a name at an index that already
 * has a call of another id opens another call, which that index's fragments then go on (servers
 * that number every call 0); a new id without a name goes on with the call.
 *
 * @since 0.2.0
 * @category models
 */
export interface ToolCallDelta {
  /** Absent from some servers' deltas (Gemini's OpenAI endpoint): a new id starts the next call, else the last goes on. */
  readonly index?: number | null | undefined
  readonly id?: string | null | undefined
  readonly name?: string | null | undefined
  readonly arguments?: string | null | undefined
  /** A Gemini thought signature (on the call's first delta, or a later one of it): kept with the call. */
  readonly signature?: string | undefined
}

/**
 * The tool calls one streamed answer may carry, indices `0` to `maxToolCalls - 1`: far beyond
 * any real answer, and a bound on what one stream assembles.
 *
 * @since 0.3.0
 * @category constructors
 */
export const maxToolCalls = 1024

/**
 * The finish reason of a turn that carried `toolCalls` calls: one that ended whole (`stop`, as
 * Gemini and Ollama say after calls, or a reason not known here) is `tool_calls`, which callers
 * and effect/ai read as calls to run; `length`, `content_filter` and `error` stay, since the calls
 * may be cut or the turn failed.
 *
 * @since 0.3.0
 * @category utils
 */
export const withToolCalls = (reason: Model.FinishReason, toolCalls: number): Model.FinishReason =>
  toolCalls > 0 && (reason === "stop" || reason === "unknown") ? "tool_calls" : reason

/**
 * A call's arguments as callers get them and servers are sent them: none, or blank text (`""`,
 * as OpenAI answers a call of a tool without parameters), is `"{}"`, the JSON every provider
 * and stricter servers of OpenAI's protocol (Databricks-hosted Claude) read as no arguments.
 *
 * @since 0.3.0
 * @category utils
 */
export const argumentsOrEmpty = (text: string | null | undefined): string =>
  text === null || text === undefined || text.trim().length === 0 ? "{}" : text

/**
 * Assembles tool calls streamed as deltas.
 *
 * @since 0.2.0
 * @category models
 */
export interface ToolCallAssembler {
  /**
   * Adds a delta; what is wrong with it, when its `index` is not an integer from 0 to
   * {@link maxToolCalls} - 1 (`1e400` reads as `Infinity`), or it opens a call past that many
   * (the delta is then not added: the caller fails the stream, naming the field).
   */
  readonly add: (delta: ToolCallDelta) => string | undefined
  readonly size: () => number
  /** The assembled calls in index order, one `ToolCall` part each; `Decode` when a call never got a name. */
  readonly parts: (ctx: CallContext) => Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError>
}

/**
 * The first call whose id an earlier call has, and that earlier call's position: a tool message
 * names the call it answers by id, so two calls of one id cannot both be answered (and OpenAI
 * refuses the next turn, which carries them back). A stream that hands calls on a chunk at a time
 * keeps `seen` (the ids so far and their positions) across its chunks, `offset` counting the calls
 * before these.
 *
 * @internal
 */
export const repeatedId = (
  calls: ReadonlyArray<Model.ToolCall>,
  seen?: Map<string, number>,
  offset = 0
): readonly [number, number] | undefined => {
  if (seen === undefined && calls.length < 2) return undefined
  const ids = seen ?? new Map<string, number>()
  for (let i = 0; i < calls.length; i++) {
    const first = ids.get(calls[i]!.id)
    if (first !== undefined) return [i, first]
    ids.set(calls[i]!.id, offset + i)
  }
  return undefined
}

/**
 * The characters of tool calls as output (names and arguments): what an output estimate counts
 * of them when the server counts no tokens. A turn of calls alone was estimated as 0 tokens.
 *
 * @internal
 */
export const callChars = (calls: ReadonlyArray<Model.ToolCall>): number => {
  let chars = 0
  for (const call of calls) chars += call.name.length + call.arguments.length
  return chars
}

/**
 * Gives ids to the tool calls of one answer that came without one (Gemini and Ollama give
 * none, some servers leave one out): `call_<n>`, `n` the call's position unless an id of the
 * answer already has it, then the next free one. A made-up id is none of the answer's own: not
 * of the calls given with it, nor of those before (a stream's earlier chunks); and a server's
 * id that is one made up earlier in the stream (a later chunk's `call_0`) gets one made up in
 * its place, since the earlier call is already delivered. Such ids are of the made-up form,
 * which Gemini's and Ollama's wires never send back, so nothing is lost. Ids the server gave
 * twice stay as they are, for {@link repeatedId} to refuse.
 *
 * @internal
 */
export interface CallIds {
  /** The calls with ids; `at(i)` the position of the `i`th (its index on the wire, or its count in the stream). */
  readonly give: <T extends { readonly id: string }>(
    calls: ReadonlyArray<T>,
    at: (i: number) => number
  ) => ReadonlyArray<T>
}

/**
 * A fresh {@link CallIds}: one per answer or stream.
 *
 * @internal
 */
export const callIds = (): CallIds => {
  // Every id handed out in this answer, and the ones made up here. Made at the first call without an id.
  let taken: Set<string> | undefined
  let made: Set<string> | undefined
  return {
    give: (calls, at) => {
      if (made === undefined && calls.every((call) => call.id.length > 0)) {
        if (taken !== undefined) for (const call of calls) taken.add(call.id)
        else if (calls.length > 0) taken = new Set(calls.map((call) => call.id))
        return calls
      }
      const ids = (taken ??= new Set())
      const ours = (made ??= new Set())
      const own = (id: string) => id.length > 0 && !ours.has(id)
      // The server's ids of these calls first: one made up before them in the list must not be one of theirs.
      const given = new Set<string>()
      for (const call of calls) if (own(call.id)) given.add(call.id)
      return calls.map((call, i) => {
        if (own(call.id)) {
          ids.add(call.id)
          return call
        }
        let n = at(i)
        while (ids.has(`call_${n}`) || given.has(`call_${n}`)) n++
        const id = `call_${n}`
        ids.add(id)
        ours.add(id)
        return { ...call, id }
      })
    }
  }
}

/**
 * A fresh {@link ToolCallAssembler} (one per stream). Calls without an id get `call_<index>`,
 * or the next number free when a call of the stream has that id ({@link callIds}).
 *
 * @since 0.2.0
 * @category constructors
 */
export const toolCallAssembler = (): ToolCallAssembler => {
  const calls = new Map<
    number,
    { id: string | undefined; name: string; arguments: string; signature: string | undefined }
  >()
  // The call each index of the wire stands for now: some servers (Ollama, SGLang, proxies) number every call 0.
  // Made at the first call: most streams carry none.
  let slots: Map<number, number> | undefined
  let last: number | undefined
  let next = 0
  // A call starts with its id and its name: another id without a name goes on with the call (Poolside changes the
  // id after a call's first fragment).
  const opensAnother = (delta: ToolCallDelta, slot: number | undefined): boolean => {
    const id = calls.get(slot ?? -1)?.id
    return (
      typeof delta.id === "string" &&
      delta.id.length > 0 &&
      id !== undefined &&
      delta.id !== id &&
      typeof delta.name === "string" &&
      delta.name.length > 0
    )
  }
  const indexOf = (delta: ToolCallDelta): number => {
    if (typeof delta.index === "number") {
      const given = delta.index
      slots ??= new Map()
      let slot = slots.get(given)
      if (slot === undefined || opensAnother(delta, slot)) {
        slot = slot === undefined && !calls.has(given) ? given : next
        slots.set(given, slot)
      }
      return slot
    }
    const opens = typeof delta.id === "string" && delta.id.length > 0 && delta.id !== calls.get(last ?? -1)?.id
    return opens || last === undefined ? next : last
  }
  return {
    add: (delta) => {
      // A Map takes any number as a key: -1 sorted first; after Infinity, every call without an index merged into one.
      if (typeof delta.index === "number" && !(Number.isInteger(delta.index) && delta.index >= 0)) {
        return `${delta.index} is not a tool-call index (an integer from 0 to ${maxToolCalls - 1})`
      }
      const index = indexOf(delta)
      if (index >= maxToolCalls) {
        return typeof delta.index === "number" && delta.index >= maxToolCalls
          ? `${delta.index} is not a tool-call index (an integer from 0 to ${maxToolCalls - 1})`
          : `more than ${maxToolCalls} tool calls`
      }
      last = index
      next = Math.max(next, index + 1)
      const call = calls.get(index) ?? { id: undefined, name: "", arguments: "", signature: undefined }
      if (typeof delta.id === "string" && delta.id.length > 0) call.id = delta.id
      // Some servers repeat the whole name in every delta (MiniMax behind NVIDIA NIM), others split it in pieces.
      if (typeof delta.name === "string" && delta.name !== call.name) call.name += delta.name
      if (typeof delta.arguments === "string") call.arguments += delta.arguments
      if (delta.signature !== undefined) call.signature = delta.signature
      calls.set(index, call)
      return undefined
    },
    size: () => calls.size,
    parts: (ctx) =>
      Effect.suspend(() => {
        const parts: Array<Model.StreamPart & { readonly _tag: "ToolCall" }> = []
        const indices = [...calls.keys()].sort((a, b) => a - b)
        for (const index of indices) {
          const call = calls.get(index)!
          if (call.name.length === 0) {
            return Effect.fail(malformed(ctx, `tool_calls[${index}].function.name`, "a tool call without a name"))
          }
          parts.push({
            _tag: "ToolCall",
            call: {
              id: call.id ?? "",
              name: call.name,
              arguments: argumentsOrEmpty(call.arguments),
              ...(call.signature === undefined ? {} : { signature: call.signature })
            }
          })
        }
        const named = callIds().give(
          parts.map((part) => part.call),
          (i) => indices[i]!
        )
        for (let i = 0; i < parts.length; i++) {
          if (named[i] !== parts[i]!.call) parts[i] = { _tag: "ToolCall", call: named[i]! }
        }
        const repeated = parts.length < 2 ? undefined : repeatedId(named)
        if (repeated !== undefined) {
          const [at, first] = repeated
          return Effect.fail(
            malformed(
              ctx,
              `tool_calls[${indices[at]}].id`,
              `the id "${parts[at]!.call.id}" is given twice (first at tool_calls[${indices[first]}])`
            )
          )
        }
        return Effect.succeed(parts)
      })
  }
}
