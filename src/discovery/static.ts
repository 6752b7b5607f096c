/**
 * The static map of `Discovery.layerStatic`: every entry checked (an `OptionError` names the
 * field), then a table of (concept, intent) to agents, with `intent: "*"` for the rest of a
 * concept.
 *
 * @internal
 */
import { Effect, Result } from "effect"
import type { Endpoint, Entry, Query, Service } from "../Discovery.js"
import * as Input from "../Input.js"
import * as Http from "../Model/http/options.js"
import {
  checkEndpoint,
  checkName,
  checkQuery,
  entryKeys,
  keyOf,
  maxQueryLength,
  optionsIssue,
  ownService
} from "./checks.js"
import { notFound } from "./errors.js"

/** @internal */
export const make = Effect.fnUntraced(function* (
  entries: ReadonlyArray<Entry>,
  options: { readonly name?: string | undefined }
) {
  if (!Array.isArray(entries)) {
    return yield* Input.orOptionError(Result.fail({ path: "entries", message: "expected an array of entries" }))
  }
  const wrong = optionsIssue(options, new Set(["name"]))
  if (wrong !== undefined) return yield* Input.orOptionError(Result.fail(wrong))
  const name = yield* Input.orOptionError(checkName(options.name, "static"))
  const table = new Map<string, ReadonlyArray<Endpoint>>()
  for (const [i, entry] of entries.entries()) {
    const at = `entries[${i}]`
    const unknown =
      typeof entry === "object" && entry !== null ? Input.unknownKey(entry, entryKeys, `${at}.`) : undefined
    if (unknown !== undefined) return yield* Input.orOptionError(Result.fail(unknown))
    for (const field of ["concept", "intent"] as const) {
      const value = yield* Input.orOptionError(Http.nonEmpty(`${at}.${field}`, entry?.[field]))
      // No query longer than that is asked (`checkQuery`): the entry would never be served.
      if (value.length > maxQueryLength) {
        return yield* Input.orOptionError(
          Result.fail({
            path: `${at}.${field}`,
            message: `expected 1 to ${maxQueryLength} characters, got ${value.length}`
          })
        )
      }
    }
    const given: unknown = entry.agents
    const agents: ReadonlyArray<unknown> = Array.isArray(given) ? given : [given]
    if (agents.length === 0 || typeof given !== "object" || given === null) {
      return yield* Input.orOptionError(
        Result.fail({
          path: `${at}.agents`,
          message: "expected an agent { url, name? } or a non-empty array of them"
        })
      )
    }
    const checked: Array<Endpoint> = []
    for (const [j, agent] of agents.entries()) {
      checked.push(yield* Input.orOptionError(checkEndpoint(`${at}.agents[${j}]`, agent, true)))
    }
    table.set(keyOf(entry), [...(table.get(keyOf(entry)) ?? []), ...checked])
  }
  const resolve = (query: Query) =>
    Effect.flatMap(checkQuery(query), (q) => {
      const found = table.get(keyOf(q)) ?? table.get(keyOf({ concept: q.concept, intent: "*" }))
      return found === undefined ? Effect.fail(notFound(q)) : Effect.succeed(found)
    })
  const service: Service = ownService({ name, resolve })
  return service
})
