/**
 * The names a request's `model` may take on a gateway, and the check of a name a key store
 * keeps for later requests (a key's `allowedModels`, a budget or a price by model): one that
 * names no domain nor `provider/model` of a provider the gateway serves would never match a
 * request, so a misspelt name would lock a key out of its model, or leave a budget or a
 * price that never applies.
 *
 * @internal
 */
import type { Models } from "../Gateway.js"
import type * as Input from "../Input.js"

/**
 * What a name is for: an entry of `allowedModels` (also `provider/*` and `*`), a budget by
 * model (one model), or a price (one model, or `*` for every other).
 *
 * @internal
 */
export type Use = "allowed" | "budget" | "price"

const list = (names: ReadonlyArray<string>) => (names.length === 0 ? "none is configured" : names.join(", "))

/**
 * The names a `model` may take, as a sentence: `a domain (d-a, d-b) or provider/model with
 * a provider of a, b`, with the wildcards `use` takes.
 *
 * @internal
 */
export const describe = (models: Models, use: Use = "budget"): string => {
  const domains = `a domain (${list(models.domains)})`
  const any = use === "allowed" ? "*" : use === "price" ? "* (every other model)" : undefined
  if (models.providers.length === 0) {
    return `${domains}${any === undefined ? "" : `, or ${any}`}`
  }
  const named = `${use === "allowed" ? "provider/model or provider/*" : "provider/model"} with a provider of ${models.providers.join(", ")}`
  return any === undefined ? `${domains} or ${named}` : `${domains}, ${named}, or ${any}`
}

/**
 * The issue of a name no request's `model` would match, named `path`; `undefined` when the
 * gateway serves it.
 *
 * @internal
 */
export const unknownModel = (models: Models, use: Use, path: string, name: string): Input.Issue | undefined => {
  if (models.domains.includes(name)) return undefined
  if (name === "*" && use !== "budget") return undefined
  const slash = name.indexOf("/")
  const model = name.slice(slash + 1)
  if (slash > 0 && model.length > 0 && models.providers.includes(name.slice(0, slash))) {
    if (model !== "*" || use === "allowed") return undefined
    return {
      path,
      message: `"${name}" is not a wildcard here: a ${use} by model names one model, a domain or provider/model`
    }
  }
  const off =
    slash > 0 && models.providers.length === 0
      ? " (provider/model names are off: the gateway's providerModels is false)"
      : ""
  return { path, message: `unknown model "${name}": expected ${describe(models, use)}${off}` }
}

/**
 * The names of several gateways (one key store may serve more than one): a name any of them
 * serves.
 *
 * @internal
 */
export const union = (a: Models | undefined, b: Models): Models =>
  a === undefined
    ? b
    : {
        domains: [...new Set([...a.domains, ...b.domains])],
        providers: [...new Set([...a.providers, ...b.providers])],
        upstreams: mergeUpstreams(a.upstreams, b.upstreams)
      }

const mergeUpstreams = (
  a: Models["upstreams"],
  b: Models["upstreams"]
): Readonly<Record<string, ReadonlyArray<string>>> | undefined => {
  if (a === undefined || b === undefined) return a ?? b
  const out: Record<string, ReadonlyArray<string>> = { ...a }
  for (const name of Object.keys(b)) {
    out[name] = Object.hasOwn(out, name) ? [...new Set([...out[name]!, ...b[name]!])] : b[name]!
  }
  return out
}

const upstreamsOf = (models: Models | undefined, name: string): ReadonlyArray<string> | undefined =>
  models?.upstreams !== undefined && Object.hasOwn(models.upstreams, name) ? models.upstreams[name] : undefined

/**
 * Whether a budget by model named `budget` applies to a request for `model`: the same name,
 * or names that may call the same upstream model (a domain, its chain's `provider/model`, or
 * another domain calling one of them), so that no other name of a model escapes its budget.
 * Allocates nothing.
 *
 * @internal
 */
export const sharesUpstream = (models: Models | undefined, budget: string, model: string): boolean => {
  if (budget === model) return true
  const ofBudget = upstreamsOf(models, budget)
  const ofModel = upstreamsOf(models, model)
  if (ofBudget === undefined) return ofModel?.includes(budget) === true
  if (ofModel === undefined) return ofBudget.includes(model)
  for (let i = 0; i < ofBudget.length; i++) if (ofModel.includes(ofBudget[i]!)) return true
  return false
}
