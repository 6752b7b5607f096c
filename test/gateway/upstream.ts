/**
 * OpenAI-compatible upstream answers for gateway tests: a completion, a stream of chunks
 * (with the usage chunk), embeddings by index, and handlers that route by path.
 */
import type { ServerResponse } from "node:http"
import * as Server from "../utils/httpServer.js"

export const completion = (
  content: string | null,
  extra: { readonly toolCalls?: ReadonlyArray<unknown>; readonly finish?: string; readonly model?: string } = {}
) => ({
  id: "chatcmpl-up",
  object: "chat.completion",
  created: 1_700_000_000,
  model: extra.model ?? "upstream-model",
  choices: [
    {
      index: 0,
      message: {
        role: "assistant",
        content,
        ...(extra.toolCalls === undefined ? {} : { tool_calls: extra.toolCalls })
      },
      logprobs: null,
      finish_reason: extra.finish ?? "stop"
    }
  ],
  usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 }
})

export const chunk = (content: string | null, finish: string | null = null) => ({
  id: "chatcmpl-up",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "upstream-model",
  choices: [{ index: 0, delta: content === null ? {} : { content }, logprobs: null, finish_reason: finish }]
})

export const usageChunk = (input = 9, output = 4) => ({
  id: "chatcmpl-up",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "upstream-model",
  choices: [],
  usage: { prompt_tokens: input, completion_tokens: output, total_tokens: input + output }
})

/** The SSE events of a streamed answer made of `pieces`. */
export const streamEvents = (pieces: ReadonlyArray<string>): ReadonlyArray<unknown> => [
  chunk(""),
  ...pieces.map((p) => chunk(p)),
  chunk(null, "stop"),
  usageChunk(),
  "[DONE]"
]

/** Embeddings for `input`, in reverse order by `index`, each vector `[i, i + 0.5, -(i + 1)]`. */
export const embeddings = (input: ReadonlyArray<string>) => ({
  object: "list",
  model: "upstream-embed",
  data: input.map((_, i) => ({ object: "embedding", index: i, embedding: [i, i + 0.5, -(i + 1)] })).reverse(),
  usage: { prompt_tokens: input.length * 3, total_tokens: input.length * 3 }
})

/** Answers chat (streamed or not, from `pieces`) and embeddings like an OpenAI server. */
export const openAi =
  (pieces: ReadonlyArray<string> = ["Hel", "lo", " wörld", "!"]): Server.Handler =>
  (request, response: ServerResponse) => {
    const body = request.json as { readonly stream?: boolean; readonly input?: ReadonlyArray<string> } | undefined
    if (request.path === "/v1/embeddings") return Server.json(response, 200, embeddings(body?.input ?? []))
    if (request.path !== "/v1/chat/completions") return Server.json(response, 404, { error: { message: "no" } })
    if (body?.stream === true) return Server.chunked(response, [Server.sse(streamEvents(pieces))], { pauseMs: 0 })
    return Server.json(response, 200, completion(pieces.join("")))
  }
