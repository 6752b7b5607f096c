/**
 * An agent described (`HttpAgent.agent`): its options checked (a bad one is kept as the
 * agent's `issue`, so each task sent to it ends in an `error` record naming the field),
 * `Redacted` header values and their bare credentials kept as the secrets errors scrub, and
 * how its answers decode: with the task's own schema, or with the default answer (the
 * task's id checked, an `error` or `failed` status reported by the agent).
 *
 * @internal
 */
import { Cause, type Duration, Effect, Redactable, Redacted, Result, Schema } from "effect"
import { ModelError } from "../AiError.js"
import type { Agent, AgentOptions, Answer, Decoded } from "../HttpAgent.js"
import * as Input from "../Input.js"
import * as Decode from "../Model/http/decode.js"
import * as Errors from "../Model/http/errors.js"
import * as Http from "../Model/http/options.js"
import { decodeRetry, type RetryPolicy } from "../Policy.js"
import { textIssue } from "../stats/labels.js"
import { agentName, display, noAgent, reservedName } from "./names.js"

// What the URL parser drops without a word (surrounding spaces, a tab or newline anywhere): the
// request went to another URL than the one given, and records named that one.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it finds
const dropped = /^\s|\s$|[\u0000-\u001f\u007f]/

const checkUrl = (input: unknown): Input.Checked<string> =>
  typeof input === "string" && dropped.test(input)
    ? Result.fail({
        path: "url",
        // Not shown: its query may hold a token.
        message: "expected a URL without surrounding spaces nor control characters (a tab, a newline)"
      })
    : Result.map(
        Http.baseUrl("url", input, "give them as a Redacted header (headers: { authorization: Redacted.make(...) })"),
        () => input as string
      )

/**
 * The values of a URL's query, as given and decoded: spans show them redacted and records leave
 * the query out, so an agent (or a discovery registry) that echoes one (a key in its error) must
 * not put it back.
 *
 * @internal
 */
export const querySecrets = (url: string): ReadonlyArray<Redacted.Redacted> => {
  const hash = url.indexOf("#")
  const at = url.indexOf("?")
  if (at === -1 || (hash !== -1 && hash < at)) return []
  const values = new Set<string>()
  for (const pair of url.slice(at + 1, hash === -1 ? undefined : hash).split("&")) {
    const eq = pair.indexOf("=")
    if (eq === -1) continue
    const raw = pair.slice(eq + 1)
    values.add(raw)
    values.add(new URLSearchParams(`v=${raw}`).get("v") ?? raw)
  }
  return Array.from(values, (value) => Redacted.make(value))
}

/**
 * An agent URL as printing an agent shows it: as records show it (no fragment nor credentials),
 * with the values of its query redacted as spans show them (a bare `?token` whole).
 */
export const printedUrl = (url: string): string => {
  const hash = url.indexOf("#")
  const at = url.indexOf("?")
  if (at === -1 || (hash !== -1 && hash < at)) return display(url)
  const pairs = url.slice(at + 1, hash === -1 ? undefined : hash).split("&")
  for (let i = 0; i < pairs.length; i++) {
    const pair = pairs[i]!
    const eq = pair.indexOf("=")
    if (pair.length > 0) pairs[i] = eq === -1 ? "<redacted>" : `${pair.slice(0, eq)}=<redacted>`
  }
  return `${display(url)}?${pairs.join("&")}`
}

/** The agent as printed: its own fields, its URL's query values redacted. */
function printed(this: Agent<unknown>): object {
  return { ...this, url: printedUrl(this.url) }
}

/**
 * What every agent is made from: `util.inspect`, `JSON.stringify` and Effect's `Formatter` (logs,
 * `Cause.pretty`) print it without the token its URL's query may hold; `agent.url` is unchanged.
 */
const agentProto: object = {
  toJSON: printed,
  [Redactable.symbolRedactable]: printed,
  [Symbol.for("nodejs.util.inspect.custom")]: printed
}

const made = (fields: Agent<unknown>): Agent<unknown> => Object.assign(Object.create(agentProto), fields)

/** Marks an agent made with `allowPlainHttpSecrets: true`; enumerable, so that a copy (`{ ...agent }`) keeps it. */
const plainHttpSecrets: unique symbol = Symbol.for("effect-orchestra/HttpAgent/allowPlainHttpSecrets")

/**
 * The answer schema of each decoding `HttpAgent.agent` made (`null`: the default answer): a copy keeping one is given
 * its own, under its own name and secrets. The one it copied named the agent copied in its errors, and scrubbed the
 * secrets of that agent's headers, not the copy's.
 */
const answerOf = new WeakMap<Agent<unknown>["decode"], Schema.Codec<unknown, unknown> | null>()

/** An agent made, marked when it was allowed plain http secrets. */
const madeAllowing = (allowed: boolean, fields: Agent<unknown>): Agent<unknown> => {
  const agent = made(fields)
  if (allowed) Object.defineProperty(agent, plainHttpSecrets, { value: true, enumerable: true })
  return agent
}

/** Whether `HttpAgent.agent` made it; a `Proxy` whose prototype trap throws is not one. */
const madeHere = (agent: Agent<unknown>): boolean => {
  try {
    return Object.getPrototypeOf(agent) === agentProto
  } catch {
    return false
  }
}

/**
 * An agent not made by `HttpAgent.agent` (a copy with a field changed, `{ ...agent, url }`, or one written by hand)
 * checked as that checks one, with the decoding of its own: its fields went unchecked, so a URL with credentials was
 * sent, a secret header went over plain http, and what could not be sent failed as an `Unknown` error naming no
 * field. An agent `HttpAgent.agent` made, or one refused already, is returned as it is.
 *
 * @internal
 */
export const checkCopy = (given: Agent<unknown>, make: (options: AgentOptions) => Agent<unknown>): Agent<unknown> => {
  if (madeHere(given) || given.issue !== undefined) return given
  const { copy, issue } = Input.readOwnFields(given, "agent")
  const answer =
    typeof copy["decode"] === "function" ? answerOf.get(copy["decode"] as Agent<unknown>["decode"]) : undefined
  const again = make({
    ...(answer === undefined || answer === null ? {} : { answer }),
    url: copy["url"] as string,
    name: copy["name"] as string,
    timeout: copy["timeout"] as Input.DurationInput | undefined,
    retry: copy["retry"] as RetryPolicy | undefined,
    headers: copy["headers"] as AgentOptions["headers"],
    allowPlainHttpSecrets: (given as { readonly [plainHttpSecrets]?: boolean })[plainHttpSecrets] === true || undefined
  })
  if (issue !== undefined) return made({ ...again, issue: { ...issue, path: `agent.${issue.path}` } })
  return again.issue !== undefined || answer !== undefined ? again : made({ ...again, decode: given.decode })
}

const agentKeys: ReadonlySet<string> = new Set([
  "url",
  "name",
  "timeout",
  "retry",
  "headers",
  "answer",
  "allowPlainHttpSecrets"
])

const agentIssue = (
  options: AgentOptions
): Input.Checked<{
  readonly name: string
  readonly timeout: Duration.Duration | undefined
  readonly retry: RetryPolicy | undefined
  readonly headers: Readonly<Record<string, string | Redacted.Redacted<string>>>
  readonly secrets: ReadonlyArray<Redacted.Redacted>
}> => {
  if (typeof options !== "object" || options === null)
    return Result.fail({ path: "agent", message: "expected { url }" })
  const misspelt = Input.misspeltKey(options, agentKeys)
  if (misspelt !== undefined) return Result.fail(misspelt)
  const headerSet = Http.headers("headers", options.headers)
  if (Result.isFailure(headerSet)) return Result.fail(headerSet.failure)
  const answer: unknown = (options as { readonly answer?: unknown }).answer
  if (answer !== undefined && !Schema.isSchema(answer)) {
    return Result.fail({ path: "answer", message: "expected a Schema of the agent's answer" })
  }
  const plainHttp = Input.notABoolean(options, ["allowPlainHttpSecrets"])
  if (plainHttp !== undefined) return Result.fail(plainHttp)
  return Result.flatMap(
    Input.all([
      checkUrl(options.url),
      // The name is shown in records, errors, metrics and stats: a URL without its query (a token).
      Result.flatMap(
        Http.nonEmpty(
          "name",
          Input.orDefault(options.name, typeof options.url === "string" ? display(options.url) : options.url)
        ),
        (name) => {
          const reserved = reservedName(name)
          if (reserved !== undefined) return Result.fail({ path: "name", message: `reserved: ${reserved}` })
          // A metric label: one without a UTF-8 form would be another such agent's. Read as given: the URL parser
          // writes a lone surrogate as U+FFFD's bytes, a request to another URL than the one given.
          const label = agentName(name)
          const defaulted = options.name === undefined
          const text = textIssue(
            defaulted && typeof options.url === "string" ? options.url : name,
            defaulted ? "url" : "name"
          )
          return text === undefined ? Result.succeed(label) : Result.fail(text)
        }
      ),
      Input.optional(options.timeout, (t) => Input.duration("timeout", t)),
      Input.optional(options.retry, (r) => decodeRetry(r, "retry"))
    ]),
    ([url, name, timeout, retry]) => {
      const given = headerSet.success.given
      // As Gemini's and watsonx's keys: a secret crosses no network in clear text, unless the application says the
      // network is its own (a service mesh encrypting it, a private link).
      const secret =
        options.allowPlainHttpSecrets === true
          ? undefined
          : Object.keys(given).find((header) => Redacted.isRedacted(given[header]))
      const plain = secret === undefined ? undefined : Http.secretUrl(`headers[${Input.shown(secret)}]`, url)
      if (plain !== undefined && Result.isFailure(plain)) return Result.fail(plain.failure)
      return Result.succeed({
        name,
        timeout,
        retry,
        headers: given,
        secrets: [...headerSet.success.secrets, ...querySecrets(options.url)]
      })
    }
  )
}

type Given = AgentOptions & { readonly answer?: Schema.Codec<unknown, unknown> }

/**
 * The options read once into a plain copy: a getter (or `Proxy` trap) that throws is the
 * agent's issue naming that field (the field left out of the copy), not an exception out of
 * `HttpAgent.agent`.
 */
const readOptions = (given: Given): { readonly options: Given; readonly issue?: Input.Issue | undefined } => {
  if (typeof given !== "object" || given === null) return { options: given }
  const { copy, issue } = Input.readOwnFields(given, "agent")
  return { options: copy as unknown as Given, issue }
}

/**
 * The status of a failed task as the agent wrote it (without surrounding spaces), if it is one:
 * `error` or `failed` in any case. `"ERROR"` or `"Failed"` made a `success` record of the agent's
 * own report of a failure.
 */
const failedStatus = (status: string): string | undefined => {
  const trimmed = status.trim()
  const lower = trimmed.toLowerCase()
  return lower === "error" || lower === "failed" ? trimmed : undefined
}

/** The agent constructor, with `schema` (`HttpAgent.Answer`) the default answer; built once. */
export const makeAgent = (schema: typeof Answer) => {
  const decodeAnswer = Decode.resultDecoder(schema)
  return (given: Given): Agent<unknown> => {
    const { options, issue: unreadable } = readOptions(given)
    const checked = unreadable === undefined ? agentIssue(options) : Result.fail(unreadable)
    // A URL that is no string is shown as none: its String() may throw (a null-prototype object), out of a
    // constructor that keeps every issue, or out of a call whose Discovery service answered it.
    const url = typeof options?.url === "string" ? options.url : ""
    const named = typeof options?.name === "string" ? agentName(options.name) : url === "" ? noAgent : display(url)
    // A refused agent's records still count under its name: not one that no label can hold.
    const name = Result.isSuccess(checked)
      ? checked.success.name
      : textIssue(named, "name") === undefined
        ? named
        : noAgent
    const base = Result.isSuccess(checked)
      ? { ...checked.success, url: options.url }
      : { name, url, timeout: undefined, retry: undefined, headers: {}, secrets: [] }
    const issue = Result.isFailure(checked) ? { ...checked.failure, path: `agent.${checked.failure.path}` } : undefined
    const ctx = { provider: name, secrets: base.secrets }
    const allowed = issue === undefined && options.allowPlainHttpSecrets === true
    if (issue === undefined && options.answer !== undefined) {
      // As an Effect: a schema may decode asynchronously (an Effect in a transformation), which a Result cannot.
      const custom = Schema.decodeUnknownEffect(options.answer)
      const refused = (error: Schema.SchemaError, answer: unknown) => {
        const at = Input.answerIssueOf(error, answer)
        return Errors.malformed(ctx, at.path, at.message)
      }
      // A schema that throws is the application's: the agent answered, so no breaker counts it (as `Unknown` did).
      const threw = (defect: unknown) =>
        new ModelError({
          reason: "Decode",
          message: Errors.clean(
            `${name}: its answer schema threw decoding the answer: ${Input.thrownMessage(defect)}`,
            ctx
          ),
          provider: name
        })
      const failed = (cause: Cause.Cause<Schema.SchemaError>, answer: unknown): Effect.Effect<never, ModelError> => {
        const error = Cause.findError(cause)
        if (Result.isSuccess(error)) return Effect.fail(refused(error.success, answer))
        const defect = Cause.findDefect(cause)
        return Result.isSuccess(defect) ? Effect.fail(threw(defect.success)) : Effect.failCause(cause as never)
      }
      const succeeded = (value: unknown) => Effect.succeed<Decoded<unknown>>({ _tag: "Result", value })
      // The answer is in the error's words (the kind of a value of another type).
      const decode: Agent<unknown>["decode"] = (value) =>
        Effect.matchCauseEffect(custom(value), { onFailure: (cause) => failed(cause, value), onSuccess: succeeded })
      answerOf.set(decode, options.answer)
      return madeAllowing(allowed, { ...base, issue, decode })
    }
    // The agent's own words, kept as its error messages are: without secrets, cut short. A result that is an error
    // object (`{ message }`, `{ error: { message } }`) says why as a string would.
    const report = (status: string, result: unknown, answer: unknown): Decoded<unknown> => {
      const words =
        typeof result === "string" ? result : (Errors.errorInfo(result).message ?? Errors.errorInfo(answer).message)
      const detail = words === undefined ? "" : `: ${Errors.clean(words, ctx)}`
      return { _tag: "Reported", message: `${name} reported status "${status}"${detail}` }
    }
    // A report of a failed task the answer's schema refuses (no `result`, its words in `error` or `message`) is still
    // the agent's report, not the agent's failure: read as an error object, it counted on the agent's breaker, was
    // retried and fell back, the task sent again.
    const reportOf = (answer: unknown, taskId: string): Decoded<unknown> | undefined => {
      if (typeof answer !== "object" || answer === null || Array.isArray(answer)) return undefined
      const { task_id, status, result } = answer as Record<string, unknown>
      if (typeof status !== "string" || (task_id !== undefined && task_id !== taskId)) return undefined
      const reported = failedStatus(status)
      return reported === undefined ? undefined : report(reported, result, answer)
    }
    const decode: Agent<unknown>["decode"] = (value, taskId) => {
      const decoded = decodeAnswer(value, ctx)
      if (Result.isFailure(decoded)) {
        const reported = reportOf(value, taskId)
        return reported === undefined ? Effect.fail(decoded.failure) : Effect.succeed(reported)
      }
      const answer = decoded.success
      if (answer.task_id !== taskId) {
        return Effect.fail(
          new ModelError({
            reason: "Decode",
            message: `${name} answered for task ${JSON.stringify(Errors.clean(answer.task_id, ctx))} instead of ${JSON.stringify(taskId)}`,
            provider: name,
            field: "task_id"
          })
        )
      }
      const reported = answer.status === undefined ? undefined : failedStatus(answer.status)
      return Effect.succeed(
        reported === undefined ? { _tag: "Result", value: answer.result } : report(reported, answer.result, answer)
      )
    }
    answerOf.set(decode, null)
    return madeAllowing(allowed, { ...base, issue, decode })
  }
}
