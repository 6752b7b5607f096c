/**
 * The gateway file of `orchestra serve`: its shape, how it is found and read (bounded, UTF-8,
 * JSON), and how its mistakes are said: every one by its path, the first {@link maxFileIssues}
 * listed and the rest counted, a layer's `OptionError` renamed to the section it came from.
 *
 * @internal
 */

import { Config, Effect, FileSystem, Layer, Option, Path, Redacted, Result, Schema, Stream } from "effect"
import * as Input from "../Input.js"
import type * as Redis from "../Redis.js"
import { type Common, exitCodes, failWith, fileTypeText, platformErrorText } from "../cli/Common.js"
import { shapeIssues, shownIssues } from "../cli/Config.js"
import * as Json from "../cli/json.js"
import * as Utf8 from "../cli/utf8.js"

const opt = Schema.optionalKey
const Duration = Schema.Union([Schema.Number, Schema.String]) as unknown as Schema.Codec<Input.DurationInput>
// As the config file's `apiKeyEnv` says it: a secret written here by mistake is not named, only refused.
const EnvName = Schema.String.check(
  Schema.isPattern(/^[A-Za-z_][A-Za-z0-9_]*$/, {
    message: "expected the name of an environment variable such as MY_SECRET (the secret itself never goes in the file)"
  })
)
const Options = Schema.Record(Schema.String, Schema.Unknown)

/**
 * The shape of the gateway file; values are checked by the layers that take them.
 *
 * @internal
 */
export const GatewayFile = Schema.Struct({
  $schema: opt(Schema.String),
  server: opt(
    Schema.Struct({
      host: opt(Schema.String),
      port: opt(Schema.Number),
      maxHeaderBytes: opt(Schema.Number),
      requestTimeout: opt(Duration),
      keepAliveTimeout: opt(Duration),
      writeTimeout: opt(Duration),
      logRequests: opt(Schema.Boolean)
    })
  ),
  gateway: opt(Options),
  allowAnonymous: opt(Schema.Boolean),
  redis: opt(
    Schema.Struct({
      urlEnv: opt(EnvName),
      // Before `breaker:`, `ratelimit:`, `gateway:` and `cache`, in stores bounding theirs to 100
      // characters: checked here, or a longer one was refused at startup naming their `prefix`.
      prefix: opt(
        Schema.String.check(
          Schema.isMaxLength(90, {
            message: "expected at most 90 characters (ratelimit: and the like are added to it)"
          })
        )
      ),
      commandTimeout: opt(Duration),
      connectTimeout: opt(Duration),
      reconnectMax: opt(Duration),
      onUnreachableAtStart: opt(Schema.Literals(["fail", "start"])),
      timeout: opt(Duration),
      reportAfter: opt(Duration),
      probeInterval: opt(Duration),
      // `Redis.layer`'s `tls`, its PEM texts as files (relative to the gateway file), read as the gateway starts.
      tls: opt(
        Schema.Struct({
          caFile: opt(Schema.Union([Schema.String, Schema.Array(Schema.String)])),
          certFile: opt(Schema.String),
          keyFile: opt(Schema.String),
          // The key's passphrase is a secret: the variable holding it, as every secret of this file.
          passphraseEnv: opt(EnvName),
          servername: opt(Schema.String)
        })
      )
    })
  ),
  keys: opt(Options),
  admin: opt(Schema.Struct({ keyEnv: opt(EnvName), path: opt(Schema.String) })),
  // A section of its own, as `admin` is: `gateway` goes to the layer as written, and a secret
  // is never written in the file.
  metrics: opt(Schema.Struct({ tokenEnv: opt(EnvName) }))
})

/**
 * @internal
 */
export type GatewayFile = typeof GatewayFile.Type

export const decodeFile = Schema.decodeUnknownResult(GatewayFile, { onExcessProperty: "error", errors: "all" })

export const maxFileBytes = 1024 * 1024

/** The gateway file refused as a whole (missing, too big, not JSON), said after its path (as its `file` in JSON). */
export const refuseIn = (common: Common, file: string, message: string) =>
  failWith(common, exitCodes.usage, `${file}: ${message}`, { kind: "config", file })

/** The gateway file: the flag, else `ORCHESTRA_GATEWAY`, else `./orchestra.gateway.json` if present, else none. */
export const loadFile = Effect.fnUntraced(function* (common: Common, flag: Option.Option<string>) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const fromEnv = yield* Config.option(Config.String("ORCHESTRA_GATEWAY")).pipe(
    Effect.orElseSucceed(() => Option.none<string>())
  )
  if (Option.isSome(flag) && flag.value.trim() === "") {
    // `--gateway "$UNSET"`: resolved, "" would name the working directory.
    return yield* failWith(common, exitCodes.usage, "--gateway is empty: give the gateway file's path", {
      kind: "usage"
    })
  }
  // As ORCHESTRA_CONFIG: spaces would name a file no one can see in the message. ("" is read as not set, as
  // Effect's config reads every empty variable.)
  if (Option.isNone(flag) && Option.isSome(fromEnv) && fromEnv.value.trim().length === 0) {
    return yield* failWith(
      common,
      exitCodes.usage,
      "ORCHESTRA_GATEWAY is empty: set it to a gateway file's path, or unset it",
      { kind: "usage" }
    )
  }
  const explicit = Option.orElse(flag, () => fromEnv)
  const file = path.resolve(Option.getOrElse(explicit, () => "orchestra.gateway.json"))
  const refuse = (message: string) => refuseIn(common, file, message)
  const info = yield* fs.stat(file).pipe(Effect.option)
  if (Option.isNone(info)) {
    // A variable set long ago (or by someone else) is easy to forget, as `orchestra`'s ORCHESTRA_CONFIG.
    if (Option.isSome(flag)) return yield* refuse("no such file")
    if (Option.isSome(fromEnv))
      return yield* refuse("no such file (named by the environment variable ORCHESTRA_GATEWAY)")
    return { file: undefined, config: {} as GatewayFile }
  }
  if (info.value.type !== "File") return yield* refuse(`not a file (${fileTypeText(info.value.type)})`)
  const tooBig = (size: string) => refuse(`${size} bytes: a gateway file is at most ${maxFileBytes} bytes`)
  if (Number(info.value.size) > maxFileBytes) return yield* tooBig(String(info.value.size))
  // The size said is no bound (a file may grow after it was looked at): no more than one byte past it is read.
  const bytes = yield* fs.stream(file, { bytesToRead: maxFileBytes + 1 }).pipe(
    Stream.runCollect,
    Effect.map((chunks) => Buffer.concat(chunks)),
    Effect.catch((error) => refuse(platformErrorText(error)))
  )
  if (bytes.length > maxFileBytes) return yield* tooBig(`more than ${maxFileBytes}`)
  const text = Utf8.decode(bytes)
  if (Result.isFailure(text))
    return yield* refuse(`line ${text.failure.line} is not UTF-8 text (save the file as UTF-8)`)
  const json = Json.parse(text.success)
  if (Result.isFailure(json)) {
    return yield* refuse(
      `not valid JSON at line ${json.failure.line}, column ${json.failure.column}: ${json.failure.message}`
    )
  }
  const decoded = decodeFile(json.success)
  if (Result.isFailure(decoded)) return yield* refuseAll(common, file, shapeIssues(GatewayFile, json.success, []))
  return { file, config: decoded.success }
})

// How many of the gateway file's mistakes are said; the rest are counted. As many as the key store says of its keys.
export const maxFileIssues = 20

/** A mistake in the gateway file; `line` is how it is said when it is the only one (else `path: message`). */
export interface FileIssue {
  readonly path: string
  readonly message: string
  readonly line?: string | undefined
}

/**
 * The gateway file's mistakes, every one by its path (as the config file's are): one on the line,
 * several one a line, the first {@link maxFileIssues} shown and the rest counted, with the `unlisted`
 * ones a check counted without keeping them.
 */
export const refuseAll = (common: Common, file: string, issues: ReadonlyArray<FileIssue>, unlisted = 0) => {
  const shown = shownIssues(issues.slice(0, maxFileIssues))
  const more = issues.length + unlisted - shown.length
  const message =
    issues.length + unlisted === 1
      ? `${file}: ${issues[0]!.line ?? `${shown[0]!.path}: ${shown[0]!.message}`}`
      : [
          `${file}: ${issues.length + unlisted} mistakes`,
          ...shown.map((issue) => `  ${issue.path}: ${issue.message}`),
          ...(more > 0 ? [`  ... and ${more} more`] : [])
        ].join("\n")
  return failWith(common, exitCodes.usage, message, {
    kind: "config",
    file,
    // Each field refused, for a program reading the JSON (as `orchestra`'s config errors give them).
    issues: shown,
    ...(more > 0 ? { moreIssues: more } : {})
  })
}

// A PEM file holds a certificate, a chain or a CA bundle: kilobytes, a few hundred for a system's whole bundle.
const maxPemBytes = 1024 * 1024

/** The text of a PEM file the gateway file names (`name`, relative to `dir`); unreadable, the mistake naming `what`. */
const pemFile = Effect.fnUntraced(function* (dir: string, name: string, what: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const file = path.resolve(dir, name)
  const fail = (message: string) => Result.fail<FileIssue>({ path: what, message: `cannot read ${file}: ${message}` })
  if (name.trim() === "")
    return Result.fail<FileIssue>({ path: what, message: "expected a file name, got an empty one" })
  const info = yield* Effect.result(fs.stat(file))
  if (Result.isFailure(info)) return fail(platformErrorText(info.failure))
  if (info.success.type !== "File") return fail(`not a file (${fileTypeText(info.success.type)})`)
  if (Number(info.success.size) > maxPemBytes) return fail(`over ${maxPemBytes} bytes: not a PEM file`)
  // The size said is no bound (a file may grow after it was looked at): no more than one byte past it is read.
  const bytes = yield* fs.stream(file, { bytesToRead: maxPemBytes + 1 }).pipe(
    Stream.runCollect,
    Effect.map((chunks) => Buffer.concat(chunks)),
    Effect.result
  )
  if (Result.isFailure(bytes)) return fail(platformErrorText(bytes.failure))
  if (bytes.success.length > maxPemBytes) return fail(`over ${maxPemBytes} bytes: not a PEM file`)
  return Result.succeed<string>(bytes.success.toString("utf8"))
})

/**
 * The `tls` of `Redis.layer` from the gateway file's `redis.tls` (`dir`: the gateway file's folder): its files read,
 * the key `Redacted`; every file that cannot be read (and a certificate without its key) is a mistake naming its field.
 */
export const redisTls = Effect.fnUntraced(function* (
  dir: string,
  spec: NonNullable<NonNullable<GatewayFile["redis"]>["tls"]>
) {
  const issues: Array<FileIssue> = []
  const read = function* (name: string, what: string) {
    const text = yield* pemFile(dir, name, what)
    if (Result.isSuccess(text)) return text.success
    issues.push(text.failure)
    return undefined
  }
  let ca: string | Array<string> | undefined
  if (typeof spec.caFile === "string") ca = yield* read(spec.caFile, "redis.tls.caFile")
  else if (spec.caFile !== undefined) {
    if (spec.caFile.length === 0) {
      issues.push({ path: "redis.tls.caFile", message: "expected a file name, or a non-empty list of them" })
    }
    const all: Array<string> = []
    for (const [i, name] of spec.caFile.entries()) {
      const text = yield* read(name, `redis.tls.caFile[${i}]`)
      if (text !== undefined) all.push(text)
    }
    ca = all
  }
  if ((spec.certFile === undefined) !== (spec.keyFile === undefined)) {
    issues.push(
      spec.certFile === undefined
        ? { path: "redis.tls.certFile", message: "expected the client certificate of keyFile, given with it" }
        : { path: "redis.tls.keyFile", message: "expected the private key of certFile, given with it" }
    )
  }
  const cert = spec.certFile === undefined ? undefined : yield* read(spec.certFile, "redis.tls.certFile")
  const key = spec.keyFile === undefined ? undefined : yield* read(spec.keyFile, "redis.tls.keyFile")
  let passphrase: Redacted.Redacted | undefined
  if (spec.passphraseEnv !== undefined) {
    const given = yield* secret(spec.passphraseEnv, "redis.tls.passphraseEnv")
    if (Result.isSuccess(given)) passphrase = given.success
    else issues.push(given.failure)
  }
  const tls: Redis.TlsOptions = {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key: Redacted.make(key) }),
    ...(passphrase === undefined ? {} : { passphrase }),
    ...(spec.servername === undefined ? {} : { servername: spec.servername })
  }
  return { tls, issues }
})

/** Where a field of `Redis.layer`'s `tls` is in the gateway file, which gives its PEM texts as files. */
export const redisTlsField = (path: string): string | undefined =>
  path === "tls.ca" || path === "tls.cert" || path === "tls.key"
    ? `redis.${path}File`
    : path === "tls.passphrase"
      ? "redis.tls.passphraseEnv"
      : undefined

/** A secret a `*Env` field of the gateway file names; unset, the mistake said with the file's others. */
export const secret = (name: string, what: string): Effect.Effect<Result.Result<Redacted.Redacted, FileIssue>> =>
  Config.Redacted(name).pipe(
    Effect.map(Result.succeed),
    Effect.orElseSucceed(() => Result.fail({ path: what, message: `set the environment variable ${name}` }))
  )

// The errors `under` has already named, with where their field is: a flag's (a usage error), or a
// file's (the gateway file when the section is one of it). A layer inside another section's (the
// admin routes inside the gateway's) keeps its own section rather than getting the outer one's too.
export const placed = new WeakMap<Input.OptionError, { readonly flag: boolean; readonly file: string | undefined }>()

/**
 * A layer's `OptionError` names its field where the user wrote it: under the file's section
 * (`keys.prices.gpt`), or as `where` says for a field that comes from elsewhere (a flag: `--port`),
 * and so does each other field refused with it. `file` is the gateway file the section is in.
 */
export const under =
  (section: string, where: (path: string) => string | undefined = () => undefined, file?: string | undefined) =>
  <A, E, R>(layer: Layer.Layer<A, E, R>): Layer.Layer<A, unknown, R> =>
    Layer.catch(layer, (error: E) => {
      if (!(error instanceof Input.OptionError) || placed.has(error)) {
        return Layer.effectDiscard(Effect.fail(error)) as never
      }
      const issue = Input.renamed(Input.issueOfError(error), (path) => where(path) ?? `${section}.${path}`)
      const flag = issue.path.startsWith("--")
      const named = Input.toOptionError(issue)
      placed.set(named, { flag, file: flag ? undefined : file })
      return Layer.effectDiscard(Effect.fail(named)) as unknown as Layer.Layer<A, unknown>
    })

/** The fields an `OptionError` refused: its own (said as the error says it when alone), then the others found with it. */
export const issuesOf = (error: Input.OptionError): ReadonlyArray<FileIssue> => {
  const issue = Input.issueOfError(error)
  return [{ path: issue.path, message: issue.message, line: error.message }, ...(issue.others?.shown ?? [])]
}
