/**
 * The library's services a command calls, loaded once its flags and its config passed every check (see
 * `Manager.library`): a refusal loads none of the executor, the router, batches and the policies under them.
 *
 * @since 0.3.0
 */
export { Batch } from "../Batch.js"
export { Executor } from "../Executor.js"
export { Router } from "../Router.js"
