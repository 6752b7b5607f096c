/**
 * The prompts of `bench` and `stats`: from `--prompts "a,b"` or `--file`, each optionally
 * `domain: question`, as batch items. A prompt whose query is empty (`"finance: "`) is
 * refused before anything runs; prompts are numbered from 1 in every message.
 *
 * @since 0.2.0
 */
import { Effect, FileSystem, Option, Result, Stdio, Stream } from "effect"
import { Flag } from "effect/cli"
import type { Item } from "../Batch.js"
import {
  type Common,
  type ExitCode,
  exitCodes,
  failWith,
  integerFlag,
  parseQuery,
  platformErrorText,
  positiveIntOf,
  readAtMost,
  splitList
} from "./Common.js"
import * as Utf8 from "./utf8.js"

/**
 * The most `--concurrency` accepts.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxConcurrency = 10_000

/**
 * The most `--max-tokens` accepts (a domain's `maxTokens` has the same bound).
 *
 * @since 0.3.0
 * @category constants
 */
export const maxTokensLimit = 1_000_000

/**
 * The `--max-tokens` flag of `test`, `bench` and `stats`.
 *
 * @since 0.3.0
 * @category flags
 */
export const maxTokensFlag = (what: string) =>
  integerFlag("max-tokens").pipe(
    Flag.withDescription(
      `Most tokens to generate${what} (at most ${maxTokensLimit}; default: the domain's or the model's)`
    ),
    Flag.optional
  )

/**
 * The flags that choose prompts and how they run (`bench` and `stats`).
 *
 * @since 0.2.0
 * @category flags
 */
export const flags = {
  prompts: Flag.String("prompts").pipe(
    Flag.withDescription(
      "Comma-separated prompts; `domain: prompt` picks a domain per prompt (a prompt, or a domain name, with a comma goes in --file)"
    ),
    Flag.optional
  ),
  file: Flag.String("file").pipe(
    Flag.withAlias("f"),
    Flag.withDescription(
      "A file with one prompt per line (blank lines and lines starting with # are skipped); - reads stdin"
    ),
    Flag.optional
  ),
  domain: Flag.String("domain").pipe(
    Flag.withAlias("d"),
    Flag.withDescription("Domain of prompts that name none (default: the default provider)"),
    Flag.optional
  ),
  fallback: Flag.String("fallback").pipe(
    Flag.withDescription("Comma-separated domains tried in order after a prompt's own domain"),
    Flag.optional
  ),
  concurrency: integerFlag("concurrency").pipe(
    Flag.withAlias("c"),
    Flag.withDescription(
      `Calls at once, default 5, at most ${maxConcurrency} (also the manager's shared limit for this run)`
    ),
    Flag.optional
  ),
  maxTokens: maxTokensFlag(" per prompt")
}

/** Prompt files are lists of questions; a bigger file is a mistake. */
const maxFileBytes = 16 * 1024 * 1024

/**
 * The flags that give the prompts, checked before anything is read: not both `--prompts` and
 * `--file`, one of them when `required`, and not an empty `--file ""`. Said before the config is
 * looked at, as the other flags are.
 *
 * @since 0.3.0
 * @category constructors
 */
export const checkSource = (
  common: Common,
  prompts: Option.Option<string>,
  file: Option.Option<string>,
  required: boolean
): Effect.Effect<void, ExitCode> => {
  if (Option.isSome(prompts) && Option.isSome(file)) {
    return failWith(common, exitCodes.usage, "give either --prompts or --file, not both", { kind: "usage" })
  }
  if (Option.isNone(prompts) && Option.isNone(file) && required) {
    return failWith(common, exitCodes.usage, 'give the prompts with --prompts "a,b,c" or --file prompts.txt', {
      kind: "usage"
    })
  }
  if (Option.isSome(file) && file.value.trim().length === 0) {
    return failWith(common, exitCodes.usage, "--file is empty: give the path of a prompts file", { kind: "usage" })
  }
  return Effect.void
}

/**
 * Reads the prompts from `--prompts` or `--file` (not both). `required`: none given is a
 * usage error. A source given but without a prompt (`--prompts ",,,"`, a file of comments)
 * is one too, whether required or not: it was meant to run something. More than `maxItems`
 * (the config's `policies.maxItems`) are refused as they are counted, naming it: none is kept
 * past that count (a prompts file of 16 MiB holds 8 million).
 *
 * @since 0.2.0
 * @category constructors
 */
export const read = Effect.fnUntraced(function* (
  common: Common,
  prompts: Option.Option<string>,
  file: Option.Option<string>,
  required: boolean,
  maxItems = Number.POSITIVE_INFINITY
) {
  yield* checkSource(common, prompts, file, required)
  const noPrompts = (where: string) =>
    failWith(common, exitCodes.usage, `no prompts given: ${where}`, { kind: "usage" })
  const tooMany = (count: number) =>
    failWith(common, exitCodes.usage, `${count} prompts: more than a batch takes (policies.maxItems: ${maxItems})`, {
      kind: "usage"
    })
  if (Option.isSome(prompts)) {
    const list = splitList(prompts.value)
    if (list.length > maxItems) return yield* tooMany(list.length)
    return list.length > 0 ? list : yield* noPrompts("--prompts holds only commas and spaces")
  }
  if (Option.isNone(file)) return []
  // `-` is stdin, as for most commands that read files: `generate-prompts | orchestra bench --file -`.
  const fromStdin = file.value === "-"
  const source = fromStdin ? "stdin" : file.value
  const unreadable = (why: string) =>
    failWith(common, exitCodes.usage, `cannot read ${source}: ${why}`, { kind: "usage" })
  const tooBig = (size: string | number) => unreadable(`${size} bytes (at most ${maxFileBytes})`)
  const bytes = fromStdin
    ? yield* readStdinAtMost(maxFileBytes).pipe(Effect.catch((error) => unreadable(platformErrorText(error))))
    : yield* readFile(file.value, unreadable, tooBig)
  if (bytes.length > maxFileBytes) yield* tooBig(`more than ${maxFileBytes}`)
  const decoded = Utf8.decode(bytes)
  if (Result.isFailure(decoded)) {
    return yield* unreadable(`line ${decoded.failure.line} is not UTF-8 text (save the file as UTF-8)`)
  }
  const text = decoded.success
  // One pass, no array of every line: past `maxItems` the prompts are only counted.
  const lines: Array<string> = []
  let count = 0
  for (let start = 0; start <= text.length; ) {
    const newline = text.indexOf("\n", start)
    const end = newline < 0 ? text.length : newline
    const line = text.slice(start, end).trim()
    start = end + 1
    if (line.length === 0 || line.startsWith("#")) continue
    if (++count <= maxItems) lines.push(line)
  }
  if (count > maxItems) return yield* tooMany(count)
  return lines.length > 0 ? lines : yield* noPrompts(`${source} has only blank lines and # comments`)
})

const readFile = Effect.fnUntraced(function* (
  file: string,
  unreadable: (why: string) => Effect.Effect<never, ExitCode>,
  tooBig: (size: string) => Effect.Effect<never, ExitCode>
) {
  const fs = yield* FileSystem.FileSystem
  const info = yield* fs.stat(file).pipe(Effect.catch((error) => unreadable(platformErrorText(error))))
  // A pipe (`--file /dev/stdin`) is read as a file is; a folder is not.
  if (info.type === "Directory") yield* unreadable("not a file (directory)")
  if (Number(info.size) > maxFileBytes) yield* tooBig(String(info.size))
  // The size said is no bound: a pipe's or a device's (`/dev/stdin`, `/dev/zero`) is known only once read, a /proc
  // file says 0, a log grows after it was looked at. No more than one byte past the bound is read, whatever it is.
  return yield* readAtMost(file, maxFileBytes).pipe(Effect.catch(unreadable))
})

/** At most `limit + 1` bytes of stdin (the Stdio service's): what is past them is not read. */
const readStdinAtMost = (limit: number) =>
  Effect.flatMap(Stdio.Stdio, (stdio) => {
    const chunks: Array<Uint8Array> = []
    let total = 0
    return stdio.stdin.pipe(
      Stream.takeUntil((chunk) => {
        chunks.push(chunk.length > limit + 1 - total ? chunk.subarray(0, limit + 1 - total) : chunk)
        total += chunks[chunks.length - 1]!.length
        return total > limit
      }),
      Stream.runDrain,
      Effect.map(() => Buffer.concat(chunks))
    )
  })

/**
 * `--max-tokens` checked as the library checks a domain's `maxTokens` (exit code 2 naming
 * the flag).
 *
 * @since 0.2.0
 * @category constructors
 */
export const maxTokensOf = (
  common: Common,
  flag: Option.Option<string>
): Effect.Effect<number | undefined, ExitCode> =>
  Option.isNone(flag) ? Effect.succeed(undefined) : positiveIntOf(common, "--max-tokens", flag.value, maxTokensLimit)

/**
 * The run options given as flags, checked (exit code 2 naming the flag).
 *
 * @since 0.2.0
 * @category constructors
 */
export const checkRunFlags = Effect.fnUntraced(function* (
  common: Common,
  args: { readonly concurrency: Option.Option<string>; readonly maxTokens: Option.Option<string> }
) {
  const concurrency = Option.isNone(args.concurrency)
    ? 5
    : yield* positiveIntOf(common, "--concurrency", args.concurrency.value, maxConcurrency)
  const maxTokens = yield* maxTokensOf(common, args.maxTokens)
  return { concurrency, maxTokens }
})

/** How many prompts with an empty query a message names. */
const namedEmpty = 5

/**
 * Prompts as batch items, their `domain:` prefixes resolved. A prompt whose query is
 * empty ends the command with exit code 2, naming it (`#3`).
 *
 * @since 0.2.0
 * @category constructors
 */
export const toItems = (
  common: Common,
  prompts: ReadonlyArray<string>,
  domains: ReadonlyArray<string>,
  maxTokens: number | undefined
): Effect.Effect<ReadonlyArray<Item>, ExitCode> => {
  const items: Array<Item> = []
  // The first few are named, the rest counted: a file of them would be a message of megabytes.
  const empty: Array<string> = []
  let emptyCount = 0
  prompts.forEach((prompt, i) => {
    const { domain, query } = parseQuery(prompt, domains)
    if (query.length === 0) {
      if (++emptyCount <= namedEmpty) empty.push(`#${i + 1} (${JSON.stringify(prompt)})`)
      return
    }
    const request = maxTokens === undefined ? { prompt: query } : { prompt: query, maxTokens }
    items.push(domain === undefined ? { request } : { request, domain })
  })
  if (emptyCount > 0) {
    const more = emptyCount > namedEmpty ? ` and ${emptyCount - namedEmpty} more` : ""
    return failWith(
      common,
      exitCodes.usage,
      `empty quer${emptyCount === 1 ? "y" : "ies"} after the domain in prompt ${empty.join(", ")}${more}: write the question after "domain:"`,
      { kind: "usage" }
    )
  }
  return Effect.succeed(items)
}
