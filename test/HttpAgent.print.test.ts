/**
 * Printing an agent (util.inspect, JSON.stringify, Effect's Formatter) shows its URL with the
 * values of its query redacted; `agent.url` stays the URL given.
 */
import { inspect } from "node:util"
import { assert, describe, it } from "@effect/vitest"
import { Formatter } from "effect"
import * as HttpAgent from "../src/HttpAgent.js"

describe("HttpAgent: an agent prints without its URL's query values", () => {
  it("util.inspect, JSON.stringify and Effect's Formatter show the query redacted; agent.url is unchanged", () => {
    const url = "http://127.0.0.1:1/task?token=s3cret-token&page=2&key=a%20b#frag"
    const agent = HttpAgent.agent({ url, name: "tokened" })
    assert.strictEqual(agent.url, url)
    const shown = [
      inspect(agent, { depth: 10 }),
      inspect({ nested: { deeper: [agent] } }, { depth: 10 }),
      inspect(agent, { depth: Number.POSITIVE_INFINITY }),
      JSON.stringify(agent),
      JSON.stringify({ tasks: [{ agent }] }),
      Formatter.format(agent),
      Formatter.format({ cause: agent })
    ]
    for (const text of shown) {
      assert.notInclude(text, "s3cret", text)
      assert.notInclude(text, "a%20b", text)
      assert.include(text, "127.0.0.1:1/task?token=<redacted>", text)
      assert.include(text, "tokened", text)
    }
    assert.deepStrictEqual(
      JSON.parse(JSON.stringify(agent)).url,
      "http://127.0.0.1:1/task?token=<redacted>&page=<redacted>&key=<redacted>"
    )
    // Still an agent to the code that reads it.
    assert.deepStrictEqual(Object.keys(agent).sort(), Object.keys({ ...agent }).sort())
    // An agent refused for its URL prints without its query too.
    const refused = HttpAgent.agent({ url: " http://127.0.0.1:1/?token=s3cret-token" })
    assert.isDefined(refused.issue)
    assert.notInclude(inspect(refused, { depth: 10 }), "s3cret")
    assert.notInclude(JSON.stringify(refused), "s3cret")
  })
})
