import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import type { ModelError } from "../../src/AiError.js"
import * as Model from "../../src/Model.js"

const boom = (what: string) => {
  throw new Error(what)
}

// Built per test: a getter that throws, or a Proxy whose traps throw, where a request is read.
const generateCases = (): ReadonlyArray<readonly [string, unknown, string]> => [
  [
    "a prompt getter",
    {
      get prompt(): string {
        return boom("prompt getter")
      }
    },
    "prompt"
  ],
  [
    "a message's content getter",
    {
      messages: [
        {
          role: "user",
          get content(): string {
            return boom("content getter")
          }
        }
      ]
    },
    "messages[0].content"
  ],
  [
    "a Proxy whose ownKeys throws",
    new Proxy(
      { prompt: "hi" },
      {
        ownKeys: () => boom("ownKeys trap")
      }
    ),
    "request"
  ]
]

const flipSync = <A>(make: () => Effect.Effect<A, ModelError>): Effect.Effect<ModelError, A> =>
  // `make` is called outside any Effect: a throw here is the defect under test.
  Effect.flip(make())

describe("request validation of a request that throws when read", () => {
  it.effect("validateGenerate and checkGenerate refuse it as InvalidRequest naming the field, never throw", () =>
    Effect.gen(function* () {
      for (const [, request, field] of generateCases()) {
        const error = yield* flipSync(() => Model.validateGenerate(request as Model.GenerateRequest))
        assert.strictEqual(error.reason, "InvalidRequest")
        assert.strictEqual(error.field, field)
        assert.include(error.message, "threw")
        const checked = Model.checkGenerate(request as Model.GenerateRequest)
        assert.strictEqual(checked?.field, field)
      }
    })
  )

  it.effect("validateEmbed refuses it as InvalidRequest naming the field, never throws", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [
          {
            get texts(): ReadonlyArray<string> {
              return boom("texts getter")
            }
          },
          "texts"
        ],
        [
          {
            texts: ["a"],
            get model(): string {
              return boom("model getter")
            }
          },
          "model"
        ]
      ]
      for (const [request, field] of cases) {
        const error = yield* flipSync(() => Model.validateEmbed(request as Model.EmbedRequest))
        assert.strictEqual(error.reason, "InvalidRequest")
        assert.strictEqual(error.field, field)
        assert.include(error.message, "threw")
      }
    })
  )
})
