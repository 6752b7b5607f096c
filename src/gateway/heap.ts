/**
 * The gateway process's V8 setting: allocation-site pretenuring off.
 *
 * V8 watches each object literal's allocation site and, when nearly all the objects made there
 * survive young collections, allocates that site's later objects directly in the old generation
 * ("pretenuring"). A server's per-request objects survive when a collection runs while many
 * requests are in flight (a burst of traffic as the process starts, cold code): their sites get
 * pretenured. From then on each request's objects born old point to its young ones, and every
 * young collection keeps them all (an old object is a root for it, dead or not): the request's
 * whole graph is promoted, which makes more sites survive and get pretenured. The process stays
 * in that state until it exits; a full collection frees the promoted objects, and the next young
 * ones are kept again at once.
 *
 * Measured on the gateway at 1,000 requests a second (`docs/benchmarks/gateway.md`): a Mock
 * provider promoted 4.8-6.3 KB a request once in that state and 0.16-0.28 with pretenuring off;
 * whether a run fell into it depended on its first seconds. V8's flag is read at each young
 * collection, so setting it as the process starts (before the load) is enough.
 *
 * @internal
 */
import { setFlagsFromString } from "node:v8"

/**
 * Turns V8's allocation-site pretenuring off for the whole process. Idempotent.
 *
 * @internal
 */
export const disablePretenuring = (): void => {
  setFlagsFromString("--no-allocation-site-pretenuring")
}
