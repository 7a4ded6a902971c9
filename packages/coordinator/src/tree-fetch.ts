/**
 * A pull's transfer of one batch (tree-send.ts runs it on its pool of
 * connections; agents on other nodes run the same): READ_BATCH on the
 * connection, each file written here by serve's `BatchWriter`. The code is
 * the agent's tree-pull.ts, so both write a pull's batches with one
 * implementation.
 */
export { pullTransfer } from '@ferry/agent';
