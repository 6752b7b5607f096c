/**
 * The domains of a manager, merged and checked without building anything: what `Orchestra.layer` checks first,
 * and what the CLI checks a config with before it loads the library's executor and providers.
 *
 * @internal
 */
import { Result } from "effect"
import { check, type Domain, type DomainInput, predefined, predefinedNames } from "../Domain.js"
import * as Input from "../Input.js"

/**
 * The domains of a manager: the predefined ones (or `domains`), plus `extraDomains`, with
 * `overrideDomains` replacing by name. Checked (an `OptionError` names the field).
 *
 * @since 0.2.0
 * @category constructors
 */
export const domainsOf = (options: {
  readonly defaultProvider: string
  /**
   * The names in `providers`: when given, a domain on any other provider is refused, as is a
   * domain named `<provider>/<model>` after one of them (a gateway's name for that provider's model).
   */
  readonly providerNames?: ReadonlyArray<string> | undefined
  readonly domains?: ReadonlyArray<Domain | DomainInput> | undefined
  readonly extraDomains?: ReadonlyArray<Domain | DomainInput> | undefined
  readonly overrideDomains?: ReadonlyArray<Domain | DomainInput> | undefined
}): Input.Checked<ReadonlyArray<Domain>> => {
  for (const path of ["domains", "extraDomains", "overrideDomains"] as const) {
    const list: unknown = options[path]
    if (list !== undefined && !Array.isArray(list))
      return Result.fail({ path, message: "expected an array of domains" })
  }
  // Each domain with the path it was given under, so a mistake is reported where the user wrote it.
  const entries: Array<{ readonly domain: unknown; readonly path: string }> = (
    options.domains ?? predefined(options.defaultProvider)
  ).map((domain, i) => ({ domain, path: `domains[${i}]` }))
  const baseNames = new Set(entries.map((e) => nameOf(e.domain)))
  for (const [i, domain] of (options.extraDomains ?? []).entries()) {
    const name = nameOf(domain)
    if (name !== undefined && baseNames.has(name)) {
      const builtIn = options.domains === undefined && predefinedNames.includes(name)
      return Result.fail({
        path: `extraDomains[${i}].name`,
        message: `${Input.shown(name)} is already a ${builtIn ? "predefined " : ""}domain: extraDomains only adds (use overrideDomains to replace it)`
      })
    }
    entries.push({ domain, path: `extraDomains[${i}]` })
  }
  const overridden = new Set<unknown>()
  for (const [i, domain] of (options.overrideDomains ?? []).entries()) {
    const name = nameOf(domain)
    if (name !== undefined && overridden.has(name)) {
      return Result.fail({ path: `overrideDomains[${i}].name`, message: `duplicate domain ${Input.shown(name)}` })
    }
    overridden.add(name)
    const at = name === undefined ? -1 : entries.findIndex((e) => nameOf(e.domain) === name)
    const entry = { domain, path: `overrideDomains[${i}]` }
    if (at === -1) entries.push(entry)
    else entries[at] = entry
  }
  const checked = check(
    entries.map((e) => e.domain),
    "domains"
  )
  if (Result.isSuccess(checked)) {
    const known = options.providerNames
    if (known === undefined) return checked
    // Checked here rather than at call time: a router resolves a whole chain first, so one
    // unknown provider would fail every chain falling back to its domain.
    const unknown = checked.success.findIndex((domain) => !known.includes(domain.provider))
    if (unknown !== -1) {
      return Result.fail({
        path: `${entries[unknown]!.path}.provider`,
        message: `no provider named ${Input.shown(checked.success[unknown]!.provider)} (given: ${known.join(", ")})`
      })
    }
    // A gateway reads a `model` as a domain first, then as `provider/model`: a domain named
    // `main/gpt-4o` would answer for provider "main"'s model "gpt-4o" with its own provider and model.
    const shadowing = checked.success.findIndex((domain) => providerModelOf(domain.name, known) !== undefined)
    if (shadowing === -1) return checked
    const name = checked.success[shadowing]!.name
    const [provider, model] = providerModelOf(name, known)!
    return Result.fail({
      path: `${entries[shadowing]!.path}.name`,
      message: `${Input.shown(name)} reads as the model ${Input.shown(model)} of provider "${provider}" (a gateway's provider/model name): give the domain a name that does not start with "${provider}/"`
    })
  }
  const at = /^domains\[(\d+)\](.*)$/.exec(checked.failure.path)
  const origin = at === null ? undefined : entries[Number(at[1])]
  return origin === undefined ? checked : Result.fail({ ...checked.failure, path: `${origin.path}${at![2]}` })
}

// The provider and model a name reads as, split at its first "/" as a gateway splits a `model`.
const providerModelOf = (
  name: string,
  providers: ReadonlyArray<string>
): readonly [provider: string, model: string] | undefined => {
  const slash = name.indexOf("/")
  if (slash <= 0 || slash === name.length - 1) return undefined
  const provider = name.slice(0, slash)
  return providers.includes(provider) ? [provider, name.slice(slash + 1)] : undefined
}

const nameOf = (domain: unknown): string | undefined =>
  typeof domain === "object" && domain !== null && typeof (domain as { name?: unknown }).name === "string"
    ? (domain as { name: string }).name
    : undefined
