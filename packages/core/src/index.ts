/**
 * @ferry/core: the pure logic of ferry. No file, socket, SSH or NATS I/O here;
 * everything is a function over data, tested without processes.
 *
 * ```ts
 * import { planRanges, rangeAt, resolveCopyOptions } from '@ferry/core';
 * const plan = planRanges(6 * 2 ** 30);        // 6 GiB, range size chosen
 * const last = rangeAt(plan, plan.count - 1);  // { index, offset, length }
 * ```
 */
export { parseSize, parseDuration, formatBytes, formatRate, formatDuration, KiB, MiB, GiB } from './units.js';
export { planRanges, rangeAt, chooseRangeBytes, RANGE_ALIGN_BYTES, MIN_AUTO_RANGE_BYTES, MAX_AUTO_RANGE_BYTES, TARGET_RANGE_COUNT } from './ranges.js';
export type { RangePlan, ByteRange } from './ranges.js';
export { IntervalSet } from './intervals.js';
export { FerryError, EXIT_CODES, toFerryError, exitCodeOf, isErrorCode, errnoOf, destinationError, sourceError } from './errors.js';
export type { ErrorCode, ErrorData, FerryErrorFields } from './errors.js';
export { parseLocation, formatLocation, hostLabel, hostName, describeHost, remoteHostKey, tildePrefix, underHome } from './location.js';
export { expandHostlist } from './hostlist.js';
export type { Location, LocalLocation, RemoteLocation } from './location.js';
export { createHasher, hashBytes, rootHash, isHashAlgorithm, HASH_ALGORITHMS } from './hash.js';
export type { HashAlgorithm, Hasher } from './hash.js';
export { encode, decode, checkPlain, MAX_DECODE_DEPTH } from './codec.js';
export { NATS_TLS_ENV, decodeClientTls, encodeClientTls } from './nats-credential.js';
export type { NatsClientTls } from './nats-credential.js';
export * from './protocol.js';
export { HUB_ACCEPTED, HUB_CHALLENGE_BYTES, HUB_FULL, HUB_GO, HUB_KEY_BYTES, HUB_NONCE_BYTES, HUB_REFUSED, JOIN_MAGIC, JOIN_PROOF_BYTES, JOIN_REQUEST_BYTES, checkHubChallenge, checkJoinProof, hubChallenge, joinRequest, parseHubKey, parseJoinRequest } from './hub-auth.js';
export * from './messages.js';
export { AGENT_EXEC_ENV, JOB_SPEC_SHA256_ENV, agentExecOf, checkSpecDigest, checkSpecExec, decodeAgentExec, defaultAgentExec, encodeAgentExec, specDigest } from './agent-exec.js';
export type { AgentExec } from './agent-exec.js';
export { MAX_BATCH_ITEM_ENTRIES, batchDoneProblem, checkControl, checkJobSpec, checkedBatchItem, checkedWorkItem, completionRejection, treePathProblem } from './bus-checks.js';
export type { CheckedBatchEntry, CompletionRejection, RangeExpectation } from './bus-checks.js';
export * from './options.js';
export { StreamTuner } from './tuner.js';
export type { TunerOptions, TunerPhase, TunerSample, TunerStep } from './tuner.js';
export { encodeRecord, replayJournal, JOURNAL_VERSION } from './journal.js';
export type { JournalRecord, ReplayResult, SourceFingerprint } from './journal.js';
export { BufferPool } from './pool.js';
export { RangeHashes } from './range-hashes.js';
export { BENCH_DISCARD_ENV, DISCARD_HOST, benchDiscardRequested, discardHash } from './discard.js';
export { globalSlot, slotHost, slotStaggerMs, CONNECT_WAVE_SIZE, CONNECT_WAVE_MS } from './slots.js';
export { CORRUPT_RANGES_ENV, HOLD_BATCHES_ENV, STOP_BEFORE_READ_ENV, corruptRangesFrom, stopBeforeReadFrom } from './test-hooks.js';
export { Semaphore, SerialQueue } from './serial.js';
export { ensureZeroed, pwriteAll } from './pwrite.js';
export { DIRECT_ALIGNMENT, FileWriter, LOCAL_DISK_FILESYSTEMS, LOCAL_DISK_FILESYSTEM_NAMES, allocAligned, directIoFits, hashStoredThrough, isAligned, openDirect, openDirectAuto } from './direct.js';
export type { DirectIoChoice } from './direct.js';
export { SAFE_FILES_CAPABILITY, TEMP_TOKEN_ENV, copyMode, identityOf, identityProblem, replacedError, tempNameFor } from './dest-file.js';
export type { FileIdentity, FoundFile } from './dest-file.js';
export { firstBadDirectory, joinUnder, pathPrefixes } from './paths.js';
export { TreePlanner, resolveTreeThresholds, fileStepRanges, finishOrder, DEFAULT_SMALL_FILE_BYTES, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES } from './tree-plan.js';
export type { TreeEntry, TreeEntryKind, TreeStep, TreeThresholds, NumberedEntry, WalkError, WalkItem } from './tree-plan.js';
export { CHECK_MARKS, TreeMatcher, compareEntries } from './tree-match.js';
export type { CheckSideName, CheckStatus, MatchOptions, MatchOutcome } from './tree-match.js';
export type { BadComponent, PathKind } from './paths.js';
export { AgentPacer, PACER_BURST_MS, Pacer, RateShares } from './pacer.js';
export { ACL_XATTRS, MAX_XATTRS_PER_ENTRY, MAX_XATTR_BYTES_PER_ENTRY, MAX_XATTR_NAME_BYTES, MAX_XATTR_VALUE_BYTES, destinationId, entryMetaOf, entryMetaProblem, exactXattrsProblem, hasMeta, xattrWanted, xattrsToRemove } from './tree-meta.js';
export type { EntryMeta, ExactXattrs, XattrScope } from './tree-meta.js';
export { MAX_GLOB_MATCHES, expandGlob, hasGlob, matchName } from './glob.js';
export type { GlobIo } from './glob.js';
export { MANIFEST_FORMAT, MANIFEST_VERSION, algorithmOfDigest, comparePaths, entryAlgorithm, entryLine, formatManifest, manifestPathProblem, parseManifest, rangedRootMatches } from './manifest.js';
export type { Manifest, ManifestEntry, ManifestFacts, ManifestHeader, RangedFileEntry, SymlinkEntry, UnknownEntry, WholeFileEntry } from './manifest.js';
