/**
 * What the gateway and a key store share at run time: the `KeyStore` service key, with the
 * types a key store implements. `Gateway.ts` re-exports it, and `gateway/keys/KeyStore.ts`
 * imports it from here, so neither module loads the other and `Gateway.ts` can re-export the key store.
 *
 * @internal
 */
import { Context } from "effect"
import type { KeyStoreService } from "../Gateway.js"

export type { KeyContext, KeyStoreService, Models } from "../Gateway.js"

/**
 * @since 0.2.0
 * @category services
 */
export class KeyStore extends Context.Service<KeyStore, KeyStoreService>()("effect-orchestra/gateway/KeyStore") {}
