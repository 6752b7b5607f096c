/**
 * The `orchestra.config.json` file: providers, domains and policies. This module reads the
 * file and checks its shape (every unknown field, every value of the wrong type, each with
 * its path: `providers.openai.streamUsage`); the values themselves (durations, counts,
 * URLs, domains) are then checked by the library's own checks (see `Setup.check`). API
 * keys never live in the file: a provider names the environment variable it reads.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Option, Path, Result, Schema, SchemaIssue, Stream } from "effect"
import * as Input from "../Input.js"
import { providerNameIssue } from "../stats/labels.js"
import { fileTypeText, platformErrorText, readAtMost } from "./Common.js"
import { ConfigFile, providerSchemas, providerTypes } from "./ConfigSchema.js"
import * as Json from "./json.js"
import * as Utf8 from "./utf8.js"

/**
 * One thing wrong with a config: where (`domains[1].retry.maxAttempts`) and what.
 *
 * @since 0.1.0
 * @category models
 */
export interface Issue {
  readonly path: string
  readonly message: string
}

/**
 * How many issues a message (and the JSON of `--json`) shows; the rest are counted. A file of
 * a megabyte may hold a hundred thousand of them.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxShownIssues = 50

/**
 * A config file that cannot be used: missing, not JSON, of the wrong shape, or refused by
 * the library's checks. Lists every issue found; its message shows the first
 * {@link maxShownIssues} and counts the rest.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConfigFileError extends Schema.TaggedError<ConfigFileError>("effect-orchestra/cli/ConfigFileError")(
  "ConfigFileError",
  {
    file: Schema.String,
    issues: Schema.Array(Schema.Struct({ path: Schema.String, message: Schema.String }))
  }
) {
  override get message(): string {
    const shown = shownIssues(this.issues).map((i) => `  ${i.path}: ${i.message}`)
    const more = this.issues.length - shown.length
    return [`invalid config ${this.file}`, ...shown, ...(more > 0 ? [`  ... and ${more} more`] : [])].join("\n")
  }
}

/**
 * The issues a message (and the JSON of `--json`) shows: the first {@link maxShownIssues},
 * each short (a path through a key of a megabyte, a message listing every provider declared).
 *
 * @since 0.3.0
 * @category utils
 */
export const shownIssues = (issues: ReadonlyArray<Issue>): ReadonlyArray<Issue> =>
  issues.slice(0, maxShownIssues).map(({ path, message }) => ({
    path: path.length <= 200 ? path : `${Input.wholePrefix(path, 197)}...`,
    message: tidy(message)
  }))

/**
 * A config and where it came from (`file` is undefined for the built-in default).
 *
 * @since 0.1.0
 * @category models
 */
export interface Loaded {
  readonly file: string | undefined
  /** Relative paths in the file (a local `modelPath`) are resolved against this. */
  readonly dir: string
  /** The file as written. Only trust its shape when `issues` is empty. */
  readonly config: ConfigFile
  /** What is wrong with its shape and references (the library's checks come on top: `Setup.check`). */
  readonly issues: ReadonlyArray<Issue>
}

/**
 * The file looked for in the working directory.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultFileName = "orchestra.config.json"

/**
 * The provider used when the file declares none: the bundled local model.
 *
 * @since 0.1.0
 * @category constants
 */
export const bundledProviderName = "local"

/**
 * Formats a path as `domains[1].retry.maxAttempts` (keys that are not identifiers in
 * brackets: `providers["my key"]`).
 *
 * @since 0.1.0
 * @category utils
 */
export const formatPath = (path: ReadonlyArray<PropertyKey>): string => {
  let out = ""
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`
    else {
      const name = String(key)
      // Past 80 characters a key is quoted and cut as Input writes a key: a 100,000-character one went whole in.
      out +=
        name.length <= 80 && /^[A-Za-z_$][\w$-]*$/.test(name)
          ? out === ""
            ? name
            : `.${name}`
          : `[${Input.shown(name)}]`
    }
  }
  return out === "" ? "(root)" : out
}

/** Fields a v0.1 file (or a hopeful user) may hold, and what to write instead. */
const hints: Readonly<Record<string, string>> = {
  "random.succeed": 'renamed to "success" in 0.2',
  "random.fail": 'renamed to "failures" in 0.2',
  "random.seed": "moved up to the provider's own seed in 0.2",
  apiKey: 'keys never go in the file: name the environment variable that holds it with "apiKeyEnv"'
}

/**
 * A message in the library's form: lower case, and short (a wrong value is echoed, and
 * may be long).
 *
 * @since 0.2.0
 * @category utils
 */
export const tidy = (message: string): string => {
  const text = message.replace(/^Expected /, "expected ")
  return text.length <= 240 ? text : `${Input.wholePrefix(text, 237)}...`
}

/** Fields whose value may be a secret put in the wrong place: a wrong value is described, never quoted. */
const secretField = /key|token|secret|password|authorization/i

/**
 * Whether a path names a field that may hold a secret: `apiKey`, `apiKeyEnv`, anything
 * under `headers`, any field whose name says key, token, secret, password or
 * authorization. A provider's own name (`providers.<name>`) is not a field.
 *
 * @since 0.3.0
 * @category utils
 */
export const isSecretPath = (path: ReadonlyArray<PropertyKey>): boolean =>
  path.some(
    (key, i) =>
      typeof key === "string" && !(i === 1 && path[0] === "providers") && (key === "headers" || secretField.test(key))
  )

const valueAt = (input: unknown, path: ReadonlyArray<PropertyKey>): unknown =>
  path.reduce<unknown>(
    (value, key) =>
      typeof value === "object" && value !== null && Object.hasOwn(value, key)
        ? (value as Record<PropertyKey, unknown>)[key]
        : undefined,
    input
  )

/** `expected string, got ["sk-…"]` as `expected string, got an array`. */
const withoutValue = (message: string, value: unknown): string => {
  const got = message.indexOf(", got ")
  return got < 0 ? message : `${message.slice(0, got)}, got ${Input.kindOf(value)}`
}

/**
 * Every issue of `input` against `schema` (unknown fields included), each by its path under
 * `prefix` in the library's words (`missing (required)`, `unknown field`, with the field it is
 * likely a typo of, else the known ones); a field that may hold a secret has its value described,
 * never quoted. The gateway file's are found the same way.
 *
 * @internal
 */
export const shapeIssues = (
  schema: Schema.Top & { readonly DecodingServices: never },
  input: unknown,
  prefix: ReadonlyArray<PropertyKey>
): ReadonlyArray<Issue> => {
  const decoded = Schema.decodeUnknownResult(schema as Schema.Codec<unknown, unknown>)(input, {
    errors: "all",
    onExcessProperty: "error",
    reportInput: true
  })
  if (Result.isSuccess(decoded)) return []
  const known = Input.knownFields(decoded.failure.issue)
  return SchemaIssue.makeFormatterStandardSchemaV1({ leafHook: Input.leafHook })(decoded.failure.issue).issues.map(
    (issue) => {
      const own = (issue.path ?? []).map((p) => (typeof p === "object" && p !== null ? p.key : p)) as Array<PropertyKey>
      const keys = [...prefix, ...own]
      const path = formatPath(keys)
      const hint = Object.entries(hints).find(([tail]) => path.endsWith(`.${tail}`))
      const message =
        issue.message === "unknown field"
          ? hint !== undefined
            ? `unknown field (${hint[1]})`
            : Input.unknownFieldMessage(own.at(-1), known(own))
          : isSecretPath(keys)
            ? withoutValue(issue.message, valueAt(input, own))
            : issue.message
      return { path, message: tidy(message) }
    }
  )
}

const isObject = (u: unknown): u is Readonly<Record<string, unknown>> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

const providerIssues = (providers: Readonly<Record<string, unknown>>): ReadonlyArray<Issue> => {
  const issues: Array<Issue> = []
  const entries = Object.entries(providers)
  if (entries.length === 0) {
    issues.push({
      path: "providers",
      message: "declare at least one provider (or leave `providers` out to use the bundled local model)"
    })
  }
  // The provider each name is taken by: breakers, rate limits, cache keys and stats go by a provider's own name.
  const named = new Map<string, string>()
  for (const [name, spec] of entries) {
    const at = formatPath(["providers", name])
    if (name.trim() === "" || name.trim() !== name || name.includes("/")) {
      issues.push({
        path: at,
        message: 'a provider name is non-empty, without surrounding spaces or a "/" (a gateway reads provider/model)'
      })
    }
    // The manager keys its providers by name in a plain object, where this one would set the prototype.
    if (name === "__proto__") issues.push({ path: at, message: '"__proto__" cannot be a provider name' })
    if (!isObject(spec)) continue
    // As the manager refuses them when it builds the providers, so that `stats` refuses what `test` does.
    const own = typeof spec.name === "string" ? spec.name : name
    const ownAt = typeof spec.name === "string" ? `${at}.name` : at
    const reserved = own === "" ? undefined : providerNameIssue(own, ownAt)
    const other = named.get(own)
    if (reserved !== undefined) issues.push({ path: ownAt, message: reserved.message })
    else if (other !== undefined && own !== "") {
      issues.push({
        path: ownAt,
        message: `"${own}" is already the name of ${formatPath(["providers", other])}: two providers of one name would share its breaker, rate limits, cache entries and stats; give each its own name`
      })
    } else named.set(own, name)
    const type = spec.type
    const schema =
      typeof type === "string" && Object.hasOwn(providerSchemas, type)
        ? providerSchemas[type as keyof typeof providerSchemas]
        : undefined
    if (schema === undefined) {
      const got = type === undefined ? "nothing" : Input.shown(type)
      issues.push({
        path: `${at}.type`,
        message: `expected one of ${providerTypes.map((t) => `"${t}"`).join(", ")}, got ${got}`
      })
      continue
    }
    issues.push(...shapeIssues(schema, spec, ["providers", name]))
  }
  return issues
}

/**
 * Some names, not the thousands a file may declare (each issue naming an unknown provider says them), each
 * shown as the unknown name is: quoted, so a stray space or a comma in a key is seen, and a long one cut.
 */
const someOf = (names: ReadonlyArray<string>): string => {
  const shown = names.slice(0, 20).map(Input.shown)
  if (names.length > 20) shown.push(`and ${names.length - 20} more`)
  return shown.join(", ")
}

/**
 * Which provider each domain, `defaultProvider` and per-provider rate limit name; the
 * domains themselves are `Domain.check`'s.
 */
const references = (config: Readonly<Record<string, unknown>>): ReadonlyArray<Issue> => {
  const issues: Array<Issue> = []
  const names = isObject(config.providers) ? Object.keys(config.providers) : [bundledProviderName]
  const declared = new Set(names)
  const known = `declared: ${someOf(names)}`
  if (typeof config.defaultProvider === "string" && !declared.has(config.defaultProvider)) {
    issues.push({
      path: "defaultProvider",
      message: `unknown provider ${Input.shown(config.defaultProvider)} (${known})`
    })
  }
  for (const section of ["domains", "extraDomains", "overrideDomains"] as const) {
    const domains = config[section]
    if (!Array.isArray(domains)) continue
    domains.forEach((domain: unknown, i) => {
      const provider = isObject(domain) ? domain.provider : undefined
      if (typeof provider === "string" && !declared.has(provider)) {
        issues.push({
          path: `${section}[${i}].provider`,
          message: `unknown provider ${Input.shown(provider)} (${known})`
        })
      }
    })
  }
  // A limit is kept under the provider's name (`name`, else its key): one under any other name limits nothing.
  const limits = isObject(config.policies) && isObject(config.policies.rateLimits) ? config.policies.rateLimits : {}
  if (isObject(limits.providers)) {
    const named = new Map<string, string>()
    if (isObject(config.providers)) {
      for (const [key, spec] of Object.entries(config.providers)) {
        named.set(isObject(spec) && typeof spec.name === "string" ? spec.name : key, key)
      }
    } else named.set(bundledProviderName, bundledProviderName)
    for (const name of Object.keys(limits.providers)) {
      if (named.has(name)) continue
      const renamed =
        isObject(config.providers) && isObject(config.providers[name]) ? config.providers[name] : undefined
      issues.push({
        path: formatPath(["policies", "rateLimits", "providers", name]),
        message:
          renamed !== undefined && typeof renamed.name === "string"
            ? `provider ${Input.shown(name)} is named ${Input.shown(renamed.name)}: its limits go under that name`
            : `unknown provider ${Input.shown(name)} (declared: ${someOf([...named.keys()])})`
      })
    }
  }
  return issues
}

/**
 * Checks the shape of a parsed file: every unknown field and every value of the wrong
 * type, each with its path, and the providers that domains, `defaultProvider` and
 * `policies.rateLimits.providers` name.
 *
 * @since 0.2.0
 * @category constructors
 */
export const inspect = (input: unknown): { readonly config: ConfigFile; readonly issues: ReadonlyArray<Issue> } => {
  if (!isObject(input)) {
    return { config: {}, issues: [{ path: "(root)", message: `expected a JSON object, got ${Input.kindOf(input)}` }] }
  }
  const issues = [
    ...shapeIssues(ConfigFile, input, []),
    ...(isObject(input.providers) ? providerIssues(input.providers) : []),
    ...references(input)
  ]
  return { config: input as ConfigFile, issues }
}

/**
 * Checks the shape of a parsed file (see {@link inspect}); the values are checked by
 * `Setup.check`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const validate = (input: unknown, file = "(config)"): Result.Result<ConfigFile, ConfigFileError> => {
  const { config, issues } = inspect(input)
  return issues.length > 0 ? Result.fail(new ConfigFileError({ file, issues })) : Result.succeed(config)
}

const syntaxError = (file: string, issue: Json.SyntaxIssue) =>
  new ConfigFileError({
    file,
    issues: [
      {
        path: "(file)",
        message:
          `not valid JSON at line ${issue.line}, column ${issue.column}: ${issue.message}` +
          (/\.ya?ml$/i.test(file) ? " (a config file is JSON; YAML is not read)" : "")
      }
    ]
  })

/**
 * Parses and checks the shape of a config file's text. Text that is not JSON is reported
 * with the line and column of the first error.
 *
 * @since 0.1.0
 * @category constructors
 */
export const parse = (text: string, file = "(config)"): Result.Result<ConfigFile, ConfigFileError> => {
  const json = Json.parse(text)
  return Result.isFailure(json) ? Result.fail(syntaxError(file, json.failure)) : validate(json.success, file)
}

/** Config files are small; a bigger one is a mistake (a log, a model), not a config. */
const maxFileBytes = 1024 * 1024

/**
 * Finds and reads the config: the `--config` path, else `ORCHESTRA_CONFIG`, else
 * `orchestra.config.json` in the working directory if it exists, else the built-in
 * default (the bundled local model with the predefined domains). A path given explicitly
 * must exist (a file, or a pipe such as `<(make-config)`); a file that is there but cannot be read (the default one too) fails, saying
 * why; a file that is not JSON fails here, one of the wrong shape comes back with its
 * `issues`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const load = Effect.fnUntraced(function* (flag: Option.Option<string>, fromEnv: Option.Option<string>) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const explicit = Option.orElse(flag, () => fromEnv)
  const cwd = path.resolve(".")
  const file = path.resolve(Option.getOrElse(explicit, () => defaultFileName))
  const fileError = (message: string) => new ConfigFileError({ file, issues: [{ path: "(file)", message }] })
  // A variable set long ago (or by someone else) is easy to forget: a file it names that cannot be used says so.
  const unusable = (message: string) =>
    fileError(
      Option.isNone(flag) && Option.isSome(fromEnv)
        ? `${message} (named by the environment variable ORCHESTRA_CONFIG)`
        : message
    )
  const stat = yield* fs.stat(file).pipe(Effect.result)
  if (Result.isFailure(stat)) {
    // Only a file that is not there means "use the default": one that is there but cannot be read
    // (permissions, a symbolic link loop) is the user's config, and running without it would hide that.
    if (Option.isNone(explicit) && stat.failure.reason._tag === "NotFound") {
      return { file: undefined, dir: cwd, config: {}, issues: [] } satisfies Loaded
    }
    return yield* unusable(platformErrorText(stat.failure))
  }
  const info = stat.success
  // A pipe (`--config <(make-config)`, `--config /dev/stdin`) is read as a file is; its size is known once read.
  if (info.type !== "File" && info.type !== "FIFO") return yield* unusable(`not a file (${fileTypeText(info.type)})`)
  const tooBig = (size: string | number) => unusable(`${size} bytes: a config file is at most ${maxFileBytes} bytes`)
  if (Number(info.size) > maxFileBytes) return yield* tooBig(String(info.size))
  // The size said is no bound (a pipe's is known once read, a file may grow after it was looked at): no more than
  // one byte past the bound is read. A pipe is read in order, as effect's FileSystem (which reads at positions) cannot.
  const bytes = yield* info.type === "FIFO"
    ? readAtMost(file, maxFileBytes).pipe(Effect.mapError(unusable))
    : fs.stream(file, { bytesToRead: maxFileBytes + 1 }).pipe(
        Stream.runCollect,
        Effect.map((chunks) => Buffer.concat(chunks)),
        Effect.mapError((error) => unusable(platformErrorText(error)))
      )
  if (bytes.length > maxFileBytes) return yield* tooBig(`more than ${maxFileBytes}`)
  const text = Utf8.decode(bytes)
  if (Result.isFailure(text)) {
    return yield* fileError(`line ${text.failure.line} is not UTF-8 text (save the file as UTF-8)`)
  }
  const json = Json.parse(text.success)
  if (Result.isFailure(json)) return yield* syntaxError(file, json.failure)
  return { file, dir: path.dirname(file), ...inspect(json.success) } satisfies Loaded
})
