/**
 * effect-orchestra: AI-model calls as composable Effect programs.
 *
 * Each module is a namespace: `Executor.layer`, `Router.Router`, `Batch.run`, ... Every module
 * is also importable on its own (`effect-orchestra/Executor`). Importing this barrel loads
 * neither the local model runtime (`@xenova/transformers`, loaded when a `Local` provider is
 * built) nor a Redis client (`redis`, loaded when `Redis.layer` is built). The gateway (an
 * HTTP server) is imported from `effect-orchestra/Gateway`.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as AiError from "./AiError.js"
/** @since 0.1.0 */
export * as Batch from "./Batch.js"
/** @since 0.1.0 */
export * as CircuitBreaker from "./CircuitBreaker.js"
/** @since 0.2.0 */
export * as Discovery from "./Discovery.js"
/** @since 0.1.0 */
export * as Domain from "./Domain.js"
/** @since 0.1.0 */
export * as EffectAi from "./Model/EffectAi.js"
/** @since 0.1.0 */
export * as Executor from "./Executor.js"
/** @since 0.1.0 */
export * as Facade from "./Facade.js"
/** @since 0.1.0 */
export * as Gemini from "./Model/Gemini.js"
/** @since 0.1.0 */
export * as HttpAgent from "./HttpAgent.js"
/** @since 0.2.0 */
export * as Input from "./Input.js"
/** @since 0.1.0 */
export * as Local from "./Model/Local.js"
/** @since 0.1.0 */
export * as Metrics from "./Metrics.js"
/** @since 0.1.0 */
export * as Mock from "./Model/Mock.js"
/** @since 0.1.0 */
export * as Model from "./Model.js"
/** @since 0.1.0 */
export * as Ollama from "./Model/Ollama.js"
/** @since 0.1.0 */
export * as OpenAiCompat from "./Model/OpenAiCompat.js"
/** @since 0.1.0 */
export * as Orchestra from "./Orchestra.js"
/** @since 0.1.0 */
export * as Pipeline from "./Pipeline.js"
/** @since 0.1.0 */
export * as Policy from "./Policy.js"
/** @since 0.2.0 */
export * as Prometheus from "./Prometheus.js"
/** @since 0.1.0 */
export * as RateLimit from "./RateLimit.js"
/** @since 0.2.0 */
export * as Redis from "./Redis.js"
/** @since 0.1.0 */
export * as ResponseCache from "./ResponseCache.js"
/** @since 0.1.0 */
export * as Router from "./Router.js"
/** @since 0.1.0 */
export * as Stats from "./Stats.js"
/** @since 0.1.0 */
export * as Streaming from "./Streaming.js"
/** @since 0.1.0 */
export * as WatsonX from "./Model/WatsonX.js"
/** @since 0.1.0 */
export { createOrchestra } from "./Facade.js"
