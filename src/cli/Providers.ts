/**
 * A config file's providers as the library's provider layers. Keys are read from the
 * environment variable each provider names, through `Config.Redacted`, and only ever held
 * as `Redacted`. Checking a provider runs the library's own option checks without any I/O
 * (no model is loaded, no request is sent); building it is the command's business. A provider's
 * module is loaded only for a provider the config declares, when it is checked or built: a
 * config refused before that loads none of them.
 *
 * @since 0.2.0
 */
import * as NodePath from "node:path"
import { Config, Effect, Layer, Option, Redacted, Result } from "effect"
import type { HttpClient } from "effect/http"
import type { ModelError } from "../AiError.js"
import { issueOfError, type OptionError, orDefault } from "../Input.js"
import type * as Gemini from "../Model/Gemini.js"
import type * as LocalOptions from "../Model/local/options.js"
import type * as Mock from "../Model/Mock.js"
import type * as Ollama from "../Model/Ollama.js"
import type * as OpenAiCompat from "../Model/OpenAiCompat.js"
import type * as WatsonX from "../Model/WatsonX.js"
import { ModelProvider } from "../Model.js"
import { formatPath, type Issue, tidy } from "./Config.js"
import type { Provider } from "./ConfigSchema.js"

/**
 * The environment variable a provider reads its key from, and whether it must be set.
 *
 * @since 0.2.0
 * @category utils
 */
export const keyOf = (spec: Provider): { readonly env: string; readonly required: boolean } | undefined => {
  switch (spec.type) {
    case "openai-compatible":
    case "ollama":
      return spec.apiKeyEnv === undefined ? undefined : { env: spec.apiKeyEnv, required: true }
    case "gemini":
      return { env: spec.apiKeyEnv ?? "GEMINI_API_KEY", required: true }
    case "watsonx":
      return { env: spec.apiKeyEnv ?? "WATSONX_API_KEY", required: true }
    default:
      return undefined
  }
}

/**
 * Whether a name given as `apiKeyEnv` looks like a key pasted in its place (a Gemini or IBM Cloud key
 * without a `-` is a valid variable name): long, with lower and upper case letters and digits, as
 * variable names seldom are. An unset one is then not said back.
 */
const looksLikeKey = (name: string): boolean =>
  name.length >= 20 && /[a-z]/.test(name) && /[A-Z]/.test(name) && /[0-9]/.test(name)

/**
 * Reads a provider's key from the environment (`Config.Redacted`): an unset or empty
 * variable is an issue naming it (never its value; nor its name when that looks like a key).
 *
 * @since 0.2.0
 * @category constructors
 */
export const readKey = (
  name: string,
  spec: Provider
): Effect.Effect<Result.Result<Redacted.Redacted<string> | undefined, Issue>> => {
  const key = keyOf(spec)
  if (key === undefined) return Effect.succeed(Result.succeed(undefined))
  const path = `${formatPath(["providers", name])}.apiKeyEnv`
  const which = (spec.type === "gemini" || spec.type === "watsonx") && spec.apiKeyEnv === undefined
  const variable = `environment variable ${key.env}${which ? " (the default of apiKeyEnv)" : ""}`
  return Config.option(Config.Redacted(key.env)).pipe(
    Effect.map((value) =>
      Option.isNone(value)
        ? Result.fail({
            path,
            message: looksLikeKey(key.env)
              ? `the environment variable it names is not set, and its name (${key.env.length} characters) is not ` +
                "shown: it looks like a key. apiKeyEnv names the variable that holds the key; the key itself never " +
                "goes in the file"
              : `${variable} is not set`
          })
        : Redacted.value(value.value).trim().length === 0
          ? Result.fail({ path, message: `${variable} is empty` })
          : Result.succeed(value.value)
    ),
    Effect.catch(() => Effect.succeed(Result.fail({ path, message: `${variable} could not be read` })))
  )
}

/**
 * A library `OptionError` (`path` relative to the provider's options) as an issue of the
 * config file (`providers.<name>.<path>`), its message {@link tidy} as every other issue's.
 *
 * @since 0.2.0
 * @category utils
 */
export const issueOf = (prefix: string, error: OptionError): Issue => {
  const { message } = issueOfError(error)
  const path = error.path === "" || error.path === "(root)" ? prefix : `${prefix}.${error.path}`
  return { path, message: tidy(message) }
}

const omit = <A extends object, K extends keyof A>(a: A, ...keys: ReadonlyArray<K>): Omit<A, K> => {
  const out: Record<PropertyKey, unknown> = { ...(a as Record<PropertyKey, unknown>) }
  for (const k of keys) delete out[k]
  return out as Omit<A, K>
}

/**
 * The file's values are typed loosely (a duration is any string, a script any object): the
 * library checks each one where it enters, exactly as for options given in code.
 */
const unchecked = <O>(options: object): O => options as O

const withName = <A extends object>(options: A, name: string, spec: { readonly name?: string | undefined }) => ({
  ...options,
  name: orDefault(spec.name, name)
})

const mockOptions = (name: string, spec: Extract<Provider, { readonly type: "mock" }>): Mock.Options => {
  const { reply, ...rest } = omit(spec, "type")
  return unchecked<Mock.Options>({
    ...withName(rest, name, spec),
    ...(reply === undefined ? {} : { respond: () => reply })
  })
}

type HttpProvider = Layer.Layer<ModelProvider, OptionError, HttpClient.HttpClient>

/** Header names that carry a credential: `Authorization`, `api-key`, `x-goog-api-key`, `Cookie`, `X-Auth-Token`... */
const secretHeader = /auth|key|token|secret|password|cookie/i

/**
 * A provider's `headers` from the file with each credential's value `Redacted`, as a key from
 * `apiKeyEnv` is: the library then scrubs it from errors (a server quoting it back) and shows it
 * redacted where requests are logged.
 */
const fileHeaders = <A extends object>(spec: A): A => {
  const headers = (spec as { readonly headers?: unknown }).headers
  if (typeof headers !== "object" || headers === null) return spec
  const redacted = Object.entries(headers).map(([name, value]: [string, unknown]) => [
    name,
    secretHeader.test(name) && typeof value === "string" ? Redacted.make(value) : value
  ])
  return { ...spec, headers: Object.fromEntries(redacted) }
}

const httpLayer = (
  name: string,
  spec: Exclude<Provider, { readonly type: "local" | "mock" }>,
  apiKey: Redacted.Redacted<string> | undefined
): HttpProvider => {
  const key = apiKey === undefined ? {} : { apiKey }
  const options = <O>(headers: boolean) =>
    unchecked<O>({ ...withName(omit(headers ? fileHeaders(spec) : spec, "type", "apiKeyEnv"), name, spec), ...key })
  const load = <M>(module: () => Promise<M>, layer: (module: M) => HttpProvider): HttpProvider =>
    Layer.unwrap(Effect.map(Effect.promise(module), layer))
  switch (spec.type) {
    case "openai-compatible":
      return load(
        () => import("../Model/OpenAiCompat.js"),
        (OpenAiCompat) => OpenAiCompat.layer(options<OpenAiCompat.Options>(true))
      )
    case "ollama":
      return load(
        () => import("../Model/Ollama.js"),
        (Ollama) => Ollama.layer(options<Ollama.Options>(true))
      )
    case "gemini":
      return load(
        () => import("../Model/Gemini.js"),
        (Gemini) => Gemini.layer(options<Gemini.Options>(true))
      )
    case "watsonx":
      return load(
        () => import("../Model/WatsonX.js"),
        (WatsonX) => WatsonX.layer(options<WatsonX.Options>(false))
      )
  }
}

const localOptions = (name: string, spec: Extract<Provider, { readonly type: "local" }>, dir: string) => {
  const { modelPath, cacheDir, ...rest } = omit(spec, "type")
  // Paths in the file are the file's, whatever the working directory. Only a usable path is
  // resolved: "" would become the config's own folder, and a null a TypeError; as written,
  // the library's check names the field and the value.
  const resolve = (path: unknown) =>
    typeof path === "string" && path.trim().length > 0 && path.trim() === path ? NodePath.resolve(dir, path) : path
  return unchecked<LocalOptions.ResolvableOptions>({
    ...withName(rest, name, spec),
    modelPath: resolve(modelPath),
    ...(cacheDir === undefined ? {} : { cacheDir: resolve(cacheDir) })
  })
}

/**
 * Runs the library's checks of a provider's options, without building it: the options a
 * layer would refuse, as issues of the config file.
 *
 * @since 0.2.0
 * @category constructors
 */
export const check = (
  name: string,
  spec: Provider,
  dir: string,
  apiKey: Redacted.Redacted<string> | undefined
): Effect.Effect<ReadonlyArray<Issue>> => {
  const prefix = formatPath(["providers", name])
  const key = keyOf(spec)
  const refused = (error: OptionError): ReadonlyArray<Issue> => {
    const issue = issueOf(prefix, error)
    // The file has no `apiKey`: the key came from the variable `apiKeyEnv` names.
    return error.path === "apiKey" && key !== undefined
      ? [{ path: `${prefix}.apiKeyEnv`, message: `environment variable ${key.env}: ${issue.message}` }]
      : [issue]
  }
  switch (spec.type) {
    case "local": {
      const options = localOptions(name, spec, dir)
      // The bundled models' folder is the provider's own default; any folder name passes the check.
      return Effect.promise(() => import("../Model/local/options.js")).pipe(
        Effect.flatMap((LocalOptions) =>
          LocalOptions.resolve({ ...options, modelPath: orDefault(options.modelPath, "models") })
        ),
        Effect.as([]),
        Effect.catch((error) => Effect.succeed(refused(error)))
      )
    }
    case "mock":
      return Effect.promise(() => import("../Model/Mock.js")).pipe(
        Effect.flatMap((Mock) => Mock.make(mockOptions(name, spec))),
        Effect.as([]),
        Effect.catch((error) => Effect.succeed(refused(error)))
      )
    default: {
      // The real layer over a client that is never called: `make` only checks and wires.
      const unused = Layer.unwrap(
        Effect.map(
          Effect.promise(() => import("effect/http")),
          ({ HttpClient }) =>
            Layer.succeed(
              HttpClient.HttpClient,
              HttpClient.make(() => Effect.die("no request is sent while checking a config"))
            )
        )
      )
      // A stand-in key only where one is sent: one made up for a provider without apiKeyEnv would be refused over
      // plain http off loopback, where no key goes.
      const layer = httpLayer(name, spec, apiKey ?? (key === undefined ? undefined : Redacted.make("unset"))).pipe(
        Layer.provide(unused)
      )
      return Layer.build(layer).pipe(
        Effect.scoped,
        Effect.as([]),
        Effect.catch((error) => Effect.succeed(refused(error)))
      )
    }
  }
}

/**
 * The layer of one declared provider, with its key. Nothing is built (no model loaded,
 * no client created) until a command provides it; transformers.js and the HTTP client
 * are imported only then.
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (
  name: string,
  spec: Provider,
  dir: string,
  apiKey: Redacted.Redacted<string> | undefined
): Layer.Layer<ModelProvider, OptionError | ModelError> => {
  switch (spec.type) {
    case "local": {
      const { modelPath, ...options } = localOptions(name, spec, dir)
      return Layer.unwrap(
        Effect.map(
          Effect.promise(() => import("../Model/Local.js")),
          (Local) => Local.layer(modelPath === undefined ? options : { ...options, modelPath })
        )
      )
    }
    case "mock":
      return Layer.effect(
        ModelProvider,
        Effect.promise(() => import("../Model/Mock.js")).pipe(
          Effect.flatMap((Mock) => Mock.make(mockOptions(name, spec))),
          Effect.map(({ provider }) => provider)
        )
      )
    default: {
      // The HTTP client of effect/http over undici's dispatch (see UndiciHttpClient: less CPU a call).
      const client = Layer.unwrap(
        Effect.map(
          Effect.promise(() => import("../UndiciHttpClient.js")),
          (UndiciHttpClient) => UndiciHttpClient.layer
        )
      )
      return httpLayer(name, spec, apiKey).pipe(Layer.provide(client))
    }
  }
}
